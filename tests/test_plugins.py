"""The plugin system: hooks, entry points, LORASTACK_LOAD_PLUGINS, failures, duplicates, `lorastack plugins`."""

from __future__ import annotations

import json

import pytest
from cli_helpers import run_cli
from PIL import Image
from plugin_helpers import CAPTIONER_PLUGIN, install_fake_plugin

from lorastack.core.interfaces import DatasetItem, Option, Skipped
from lorastack.plugins import hookimpl, hookspecs
from lorastack.plugins.manager import PluginError, PluginManager, UnknownNameError, get_manager, reset_manager

BUILTIN_SOURCES = {"folder", "zip", "hf"}
BUILTIN_CAPTIONERS = {"filename", "sidecar", "blip"}


@pytest.fixture(autouse=True)
def _fresh_manager(monkeypatch):
    monkeypatch.delenv("LORASTACK_LOAD_PLUGINS", raising=False)
    reset_manager()
    yield
    reset_manager()


def _item(name="a.png"):
    return DatasetItem(Image.new("RGB", (8, 8), (200, 10, 10)), None, name)


class _Source:
    name = "memory"
    description = "Items held in memory."
    options = (Option("count", "int", default=2, minimum=1, help="How many items"),)

    def detect(self, location):
        return location.startswith("memory:")

    def open(self, location, options):
        for i in range(options["count"]):
            yield _item(f"m{i}.png")
        yield Skipped("broken.png", "truncated")


class _Trainer:
    name = "noop"
    description = "Trains nothing."
    options = (Option("steps", "int", default=1, minimum=1),)

    def train(self, context, options):
        return {"steps": options["steps"], "context": context}


class _Plugin:
    """A plugin object implementing every hook, registered by hand the way tests and applications do."""

    @hookimpl
    def register_dataset_sources(self, register):
        register(_Source())

    @hookimpl
    def register_trainers(self, register):
        register(_Trainer())


def test_hook_register_dataset_sources(plugin_manager):
    from lorastack.core.data import open_dataset

    manager = plugin_manager
    manager.register(_Plugin(), "test-plugin")
    assert manager.registered["dataset_sources"]["memory"].plugin == "test-plugin"
    dataset = open_dataset("memory:x", options={"count": "3"})  # found by detect(), option parsed from text
    assert dataset.source == "memory" and len(dataset) == 3 and dataset.skipped == [Skipped("broken.png", "truncated")]
    with pytest.raises(ValueError, match="--count '0' must be ≥ 1"):
        open_dataset("memory:x", options={"count": "0"})


def test_hook_register_captioners(tmp_path, monkeypatch):
    install_fake_plugin(tmp_path / "site", monkeypatch, "lorastack-upper", "lorastack_upper", CAPTIONER_PLUGIN.format(
        name="upper"))  # fmt: skip
    manager = PluginManager()
    captioner = manager.get("captioners", "upper")
    assert list(captioner.caption([_item("x.png")], {"suffix": "!"})) == ["X.PNG!"]
    info = manager.plugins["lorastack_upper"]
    assert (info.distribution, info.version, info.builtin) == ("lorastack-upper", "1.0", False)
    assert info.hooks == ["register_captioners"]


def test_hook_register_trainers():
    manager = PluginManager(entry_points=False)
    manager.register(_Plugin(), "test-plugin")
    trainer = manager.get("trainers", "noop")
    assert trainer.train("ctx", {"steps": 3}) == {"steps": 3, "context": "ctx"}
    assert manager.names("trainers") == ["noop"]


def test_builtins_load_through_the_entry_point_group():
    manager = PluginManager()
    builtins = {name: info for name, info in manager.plugins.items() if info.builtin}
    assert builtins and all(info.distribution == "lorastack" for info in builtins.values())
    assert set(manager.names("dataset_sources")) >= BUILTIN_SOURCES
    assert set(manager.names("captioners")) >= BUILTIN_CAPTIONERS


def test_a_duplicate_name_is_an_error_naming_both_plugins(tmp_path, monkeypatch):
    install_fake_plugin(tmp_path / "a", monkeypatch, "plugin-a", "plugin_a", CAPTIONER_PLUGIN.format(name="dup"))
    install_fake_plugin(tmp_path / "b", monkeypatch, "plugin-b", "plugin_b", CAPTIONER_PLUGIN.format(name="dup"))
    with pytest.raises(PluginError, match=r"captioner 'dup' is registered by two plugins, 'plugin_a' and 'plugin_b'"):
        PluginManager()
    # a duplicate of a built-in name names the built-in plugin
    install_fake_plugin(tmp_path / "c", monkeypatch, "plugin-c", "plugin_c", CAPTIONER_PLUGIN.format(name="blip"))
    with pytest.raises(PluginError, match=r"'lorastack-captioners' and 'plugin_c'"):
        PluginManager(allow="plugin-c")


def test_a_plugin_that_fails_to_import_is_reported_and_skipped(tmp_path, monkeypatch, caplog):
    install_fake_plugin(
        tmp_path / "broken", monkeypatch, "lorastack-broken", "lorastack_broken", "raise RuntimeError('boom')\n"
    )
    install_fake_plugin(tmp_path / "ok", monkeypatch, "lorastack-upper", "lorastack_upper", CAPTIONER_PLUGIN.format(
        name="upper"))  # fmt: skip
    manager = PluginManager()
    assert [(f.plugin, f.error) for f in manager.failures] == [
        ("lorastack_broken", "cannot be imported: RuntimeError: boom")
    ]
    assert "upper" in manager.names("captioners") and "lorastack_broken" not in manager.plugins
    assert "plugin lorastack_broken cannot be imported" in caplog.text
    code, out, _ = run_cli("plugins")
    assert code == 0 and "lorastack_broken FAILED: cannot be imported: RuntimeError: boom" in out


def test_a_hook_that_raises_is_reported_and_its_names_dropped(tmp_path, monkeypatch):
    source = (
        CAPTIONER_PLUGIN.format(name="half")
        + """
    @hookimpl
    def register_dataset_sources(register):
        raise OSError("no disk")
"""
    )
    install_fake_plugin(tmp_path / "h", monkeypatch, "lorastack-half", "lorastack_half", source)
    manager = PluginManager()
    assert "half" in manager.names("captioners")
    assert [f.error for f in manager.failures] == ["failed in register_dataset_sources: OSError: no disk"]


def test_malformed_registrations_are_refused():
    class Bad:
        @hookimpl
        def register_captioners(self, register):
            register(type("C", (), {"name": "Bad Name", "options": (), "caption": lambda self, i, o: iter(())})())

    manager = PluginManager(entry_points=False)
    with pytest.raises(PluginError, match="registered a captioner with the name 'Bad Name'"):
        manager.register(Bad(), "bad")

    class NoMethod:
        @hookimpl
        def register_trainers(self, register):
            register(type("T", (), {"name": "t", "options": ()})())

    with pytest.raises(PluginError, match="trainer 't' has no train method"):
        PluginManager(entry_points=False).register(NoMethod(), "nomethod")


def test_load_plugins_limits_third_party_plugins_only(tmp_path, monkeypatch):
    install_fake_plugin(tmp_path / "u", monkeypatch, "lorastack-upper", "lorastack_upper", CAPTIONER_PLUGIN.format(
        name="upper"))  # fmt: skip
    monkeypatch.setenv("LORASTACK_LOAD_PLUGINS", "")
    manager = PluginManager()
    assert "upper" not in manager.names("captioners") and "filename" in manager.names("captioners")
    monkeypatch.setenv("LORASTACK_LOAD_PLUGINS", "lorastack-upper")  # by distribution name
    assert "upper" in PluginManager().names("captioners")
    monkeypatch.setenv("LORASTACK_LOAD_PLUGINS", "something-else, lorastack_upper")  # by plugin name
    assert "upper" in PluginManager().names("captioners")


def test_unknown_names_list_the_available_ones():
    with pytest.raises(UnknownNameError, match=r"unknown captioner 'blipp'; available: .*blip.*filename"):
        get_manager().get("captioners", "blipp")
    code, _, err = run_cli("caption", ".", "--captioner", "blipp")
    assert code == 1 and "unknown captioner 'blipp'; available:" in err and "Traceback" not in err


def test_plugins_command_lists_plugins_versions_and_names():
    from lorastack import __version__

    code, out, _ = run_cli("plugins", "--json")
    assert code == 0
    data = json.loads(out)
    plugins = {p["name"]: p for p in data["plugins"]}
    assert plugins["lorastack-sources"]["version"] == __version__
    assert set(plugins["lorastack-sources"]["provides"]["dataset_sources"]) >= BUILTIN_SOURCES
    assert set(plugins["lorastack-captioners"]["hooks"]) == {"register_captioners"}
    folder = data["registered"]["dataset_sources"]["folder"]
    assert folder["plugin"] == "lorastack-sources" and folder["description"]
    assert all({"name", "type", "help"} <= set(o) for o in folder["options"])
    code, out, _ = run_cli("plugins")
    assert code == 0 and "lorastack-captioners" in out and "built-in" in out and "dataset sources:" in out


def test_every_hook_is_documented_in_its_hookspec():
    for name in ("register_trainers", "register_captioners", "register_dataset_sources"):
        doc = getattr(hookspecs, name).__doc__
        assert doc and ":param register:" in doc and "Called once" in doc
