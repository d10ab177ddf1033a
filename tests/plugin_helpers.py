"""Installed-looking plugin distributions on a temporary sys.path entry, found through real entry-point metadata."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path


def install_fake_plugin(root: Path, monkeypatch, dist: str, module: str, source: str, version: str = "1.0") -> None:
    """Write ``module.py`` and a ``dist-info`` declaring it in the ``lorastack`` entry-point group, on ``sys.path``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[lorastack]\n{module} = {module}\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, module, raising=False)


CAPTIONER_PLUGIN = """
    from lorastack.core.interfaces import Option
    from lorastack.plugins import hookimpl

    class Upper:
        name = "{name}"
        description = "Upper-cases the item's source name."
        options = (Option("suffix", "str", default="", help="Text appended"),)

        def caption(self, items, options):
            for item in items:
                yield item.source.upper() + options["suffix"]

    @hookimpl
    def register_captioners(register):
        register(Upper())
"""
