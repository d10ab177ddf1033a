"""Meta-tests: every hook has a section in docs/plugins.md and a test named after it; docs name real things."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from lorastack.plugins import hookspecs

ROOT = Path(__file__).resolve().parent.parent
PLUGINS_DOC = (ROOT / "docs" / "plugins.md").read_text()
HOOKS = sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "lorastack_spec"))


def test_the_hook_specs_are_found():
    assert {"register_captioners", "register_dataset_sources", "register_trainers"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_builtin_implementation(plugin_manager, hook):
    # built-ins are written like third-party plugins: each hook is exercised by lorastack's own plugins
    builtins = {info.name for info in plugin_manager.plugins.values() if info.builtin}
    assert {impl.plugin_name for impl in getattr(plugin_manager.pm.hook, hook).get_hookimpls()} & builtins


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_doc_section(hook):
    params = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert f"### {hook}({params})" in PLUGINS_DOC, f"docs/plugins.md lacks a section '### {hook}({params})'"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    tests = (ROOT / "tests" / "test_plugins.py").read_text()
    assert re.search(rf"^def test_hook_{hook}\(", tests, re.M), f"tests/test_plugins.py lacks test_hook_{hook}"


def test_the_example_plugin_in_the_docs_matches_the_package():
    pyproject = (ROOT / "examples" / "lorastack-plugin-example" / "pyproject.toml").read_text()
    assert '[project.entry-points.lorastack]\nexample = "lorastack_plugin_example"' in pyproject
    assert '[project.entry-points.lorastack]\nexample = "lorastack_plugin_example"' in PLUGINS_DOC
    source = (ROOT / "examples" / "lorastack-plugin-example" / "lorastack_plugin_example" / "__init__.py").read_text()
    for name in ("ColourCaptioner", "ListFileSource", "register_captioners", "register_dataset_sources"):
        assert name in source and name in PLUGINS_DOC
