"""docs/architecture.md describes the tree as it is: every package and every module in it is listed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text()
PACKAGE_DIRS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def section(folder: str) -> str:
    """The part of the page about ``folder`` (``## core/`` up to the next heading of that level)."""
    match = re.search(rf"^## {re.escape(folder)}\n(.*?)(?=^## |\Z)", DOC, re.S | re.M)
    return match.group(1) if match else ""


def modules() -> list[tuple[str, str]]:
    """(the package's folder, module file) for every module of every installed package, subpackages included."""
    found = []
    for folder in sorted(set(PACKAGE_DIRS.values())):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name != "__init__.py" and "__pycache__" not in path.parts:
                found.append((folder, path.relative_to(ROOT / folder).as_posix()))
    return found


def test_every_package_folder_is_in_the_layout_table():
    layout = section("Layout")
    for package, folder in PACKAGE_DIRS.items():
        assert f"| `{folder}/` | `{package}` |" in layout, f"docs/architecture.md's layout table lacks {folder}/"


@pytest.mark.parametrize(("folder", "module"), modules(), ids=lambda v: v)
def test_every_module_is_described(folder, module):
    # a module is named in its package's section (a subpackage's modules in its row), or, for the small top-level
    # package, in the layout table
    text = section(f"{folder}/") or section("Layout")
    name = module.rsplit("/", 1)[-1]
    assert f"`{name}`" in text or f"`{module}`" in text, f"docs/architecture.md does not describe {folder}/{module}"
