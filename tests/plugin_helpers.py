"""Installed-looking plugin distributions on a temporary sys.path entry, found through real entry-point metadata."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path


def install_fake_plugin(root: Path, monkeypatch, dist: str, module: str, source: str, version: str = "1.0") -> None:
    """Write ``module.py`` and a ``dist-info`` declaring it in the ``lorastack`` entry-point group, on ``sys.path``.

    The distribution is added to ``LORASTACK_LOAD_PLUGINS``: the test opts in to it (and to no other installed
    plugin), as the global fixture lets only the built-ins load.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[lorastack]\n{module} = {module}\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, module, raising=False)
    allowed = [n for n in os.environ.get("LORASTACK_LOAD_PLUGINS", "").split(",") if n.strip()]
    monkeypatch.setenv("LORASTACK_LOAD_PLUGINS", ",".join([*allowed, dist]))


CAPTIONER_PLUGIN = """
    from lorastack.plugins.api import Option, hookimpl

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

# A plugin whose source hook is misspelt (singular); its captioner hook is spelt right.
MISSPELT_PLUGIN = (
    CAPTIONER_PLUGIN.format(name="upper")
    + """
    class Lines:
        name = "lines"
        description = "Never registered: the hook below is not a lorastack hook."
        options = ()

        def detect(self, location):
            return location.endswith(".lines")

        def open(self, location, options):
            return iter(())

    @hookimpl
    def register_dataset_source(register):
        register(Lines())
"""
)
