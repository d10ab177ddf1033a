"""The plugin system: hooks, entry points, LORASTACK_LOAD_PLUGINS, failures, duplicates, misspelt hooks, tracing,
`lorastack plugins`."""

from __future__ import annotations

import json

import pytest
from cli_helpers import run_cli
from PIL import Image
from plugin_helpers import CAPTIONER_PLUGIN, MISSPELT_PLUGIN, install_fake_plugin

from lorastack.plugins import hookspecs
from lorastack.plugins.api import DatasetItem, Option, Skipped, hookimpl
from lorastack.plugins.manager import PluginError, PluginManager, UnknownNameError, get_manager, get_trainer

BUILTIN_SOURCES = {"folder", "zip", "hf"}
BUILTIN_CAPTIONERS = {"filename", "sidecar", "blip"}


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


def test_hook_register_trainers(plugin_manager):
    plugin_manager.register(_Plugin(), "test-plugin")
    # lorastack's own lookup (what `lorastack train --trainer noop` uses) finds the object the hook registered
    trainer = get_trainer("noop")
    assert isinstance(trainer, _Trainer) and plugin_manager.registered["trainers"]["noop"].plugin == "test-plugin"
    assert {"noop", "lora", "dreambooth"} <= set(plugin_manager.names("trainers"))
    code, out, _ = run_cli("plugins", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["registered"]["trainers"]["noop"] == {
        "plugin": "test-plugin", "description": "Trains nothing.",
        "options": [{"name": "steps", "type": "int", "help": "", "default": 1, "minimum": 1}],
    }  # fmt: skip
    assert {p["name"]: p["provides"] for p in data["plugins"]}["test-plugin"] == {
        "dataset_sources": ["memory"], "trainers": ["noop"]
    }  # fmt: skip

    class Lora(_Trainer):
        name = "lora"

    class Clash:
        @hookimpl
        def register_trainers(self, register):
            register(Lora())

    with pytest.raises(PluginError, match=r"trainer 'lora' is registered by two plugins, 'lorastack-trainers' and "):
        plugin_manager.register(Clash(), "clash")


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


def _registering(kind: str, obj) -> object:
    """A plugin object whose ``kind`` hook registers ``obj``."""
    plugin = type("P", (), {})()
    hook = hookimpl(lambda register: register(obj))
    setattr(plugin, f"register_{kind}", hook)
    return plugin


def test_malformed_registrations_are_refused():
    def refused(kind: str, members: dict) -> str:
        with pytest.raises(PluginError) as info:
            PluginManager(entry_points=False).register(_registering(kind, type("X", (), members)()), "bad")
        return str(info.value)

    caption = {"caption": lambda self, items, options: iter(())}
    assert "registered a captioner with the name 'Bad Name'" in refused(
        "captioners", {"name": "Bad Name", "description": "", "options": (), **caption}
    )
    # checked against the protocol (isinstance): every declared member, attributes and methods, is required
    assert refused("trainers", {"name": "t", "options": ()}) == (
        "plugin 'bad': trainer 't' lacks description, train(); a trainer has name, description, options, train() "
        "(lorastack.core.interfaces.Trainer)"
    )
    assert "dataset source 's' lacks open()" in refused(
        "dataset_sources", {"name": "s", "description": "", "options": (), "detect": bool, "open": "not callable"}
    )
    assert "has options that are not Option objects" in refused(
        "captioners", {"name": "c", "description": "", "options": ("prefix",), **caption}
    )
    # optional members may be left out, but a present one must have the documented type
    assert "captioner 'c': reads_captions 'yes' is not true or false" in refused(
        "captioners", {"name": "c", "description": "", "options": (), "reads_captions": "yes", **caption}
    )
    source = {"name": "s", "description": "", "options": (), "detect": bool, "open": lambda self, loc, opts: iter(())}
    assert "dataset source 's': priority 1.5 is not an integer" in refused(
        "dataset_sources", {**source, "priority": 1.5}
    )
    assert "trainer 't': check 'strict' is not a method" in refused(
        "trainers", {"name": "t", "description": "", "options": (), "train": print, "check": "strict"}
    )
    manager = PluginManager(entry_points=False)
    manager.register(_registering("dataset_sources", type("S", (), source)()), "fine")  # no priority: the default
    assert manager.names("dataset_sources") == ["s"]


def test_a_misspelt_hook_is_reported_by_name_and_the_other_hooks_work(tmp_path, monkeypatch, caplog):
    install_fake_plugin(tmp_path / "m", monkeypatch, "lorastack-misspelt", "lorastack_misspelt", MISSPELT_PLUGIN)
    manager = PluginManager()
    assert "upper" in manager.names("captioners") and "lines" not in manager.names("dataset_sources")
    info = manager.plugins["lorastack_misspelt"]
    assert (info.distribution, info.hooks, info.unknown_hooks) == (
        "lorastack-misspelt", ["register_captioners"], ["register_dataset_source"]
    )  # fmt: skip
    warning = (
        "implements register_dataset_source, which is not a lorastack hook (did you mean register_dataset_sources?); "
        "it is never called"
    )
    assert f"plugin lorastack_misspelt {warning}" in caplog.text and not manager.failures
    code, out, _ = run_cli("plugins", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["warnings"] == [{"plugin": "lorastack_misspelt", "warning": warning}]
    unknown = {p["name"]: p["unknown_hooks"] for p in data["plugins"]}
    assert unknown["lorastack_misspelt"] == ["register_dataset_source"] and unknown["lorastack-sources"] == []
    code, out, _ = run_cli("plugins")
    assert code == 0 and f"lorastack_misspelt WARNING: {warning}" in out


def test_an_optional_hook_of_a_newer_lorastack_is_not_reported():
    class Newer:
        @hookimpl(optionalhook=True)
        def register_evaluators(self, register): ...

    manager = PluginManager(entry_points=False)
    manager.register(Newer(), "newer")
    assert manager.plugins["newer"].unknown_hooks == [] and manager.problems == []


def test_an_implementation_taking_fewer_arguments_than_the_spec_works(tmp_path, monkeypatch):
    # pluggy passes an implementation only the arguments it names, which keeps old plugins working when a spec grows
    source = (
        CAPTIONER_PLUGIN.format(name="upper")
        + """
    CALLS = []

    @hookimpl
    def register_dataset_sources():
        CALLS.append("register_dataset_sources")
"""
    )
    install_fake_plugin(tmp_path / "f", monkeypatch, "lorastack-fewer", "lorastack_fewer", source)
    manager = PluginManager()
    import lorastack_fewer

    assert lorastack_fewer.CALLS == ["register_dataset_sources"] and manager.failures == []
    assert manager.plugins["lorastack_fewer"].hooks == ["register_captioners", "register_dataset_sources"]
    assert list(manager.get("captioners", "upper").caption([_item("x.png")], {"suffix": ""})) == ["X.PNG"]


def test_trace_plugins_prints_each_hook_call_through_pluggys_monitoring(tmp_path, monkeypatch, capsys):
    source = (
        CAPTIONER_PLUGIN.format(name="upper")
        + """
    @hookimpl
    def register_trainers(register):
        raise OSError("no disk")
"""
    )
    install_fake_plugin(tmp_path / "t", monkeypatch, "lorastack-traced", "lorastack_traced", source)
    monkeypatch.setenv("LORASTACK_TRACE_PLUGINS", "1")
    code, _, err = run_cli("plugins")
    assert code == 0
    assert "lorastack: calling register_captioners of plugin lorastack_traced\n" in err
    assert "lorastack: register_captioners of plugin lorastack_traced done\n" in err
    assert "lorastack: register_trainers of plugin lorastack_traced raised OSError: no disk\n" in err
    assert "lorastack: register_trainers of plugin lorastack-trainers done\n" in err
    # the monitoring is pluggy's own: a hook called on pluggy's manager directly is traced too
    manager = PluginManager(entry_points=False)
    manager.register(_Plugin(), "direct")
    capsys.readouterr()
    manager.pm.hook.register_trainers(register=lambda obj: None)
    assert capsys.readouterr().err == (
        "lorastack: calling register_trainers of plugin direct\nlorastack: register_trainers of plugin direct done\n"
    )
    monkeypatch.setenv("LORASTACK_TRACE_PLUGINS", "0")
    assert "lorastack: calling" not in run_cli("plugins")[2]


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


def test_hook_register_metadata_sources(plugin_manager, registry, tmp_path):
    from lorastack.core.enrich import enrich
    from lorastack.plugins.api import LookupAnswer, MetadataSource
    from lorastack.registry.metadata import get_metadata
    from lorastack.testing.registry import small_adapter

    class Notes:
        name, description, options = "notes", "Notes from a list.", ()

        def lookup(self, items, options):
            for item in items:
                yield LookupAnswer(item.ref, "found", {"notes": f"seen {item.sha256[:8]}", "lineage": "Pony"})

        def fetch_preview(self, url, limit):
            raise AssertionError("no previews were offered")

    class Plugin:
        @hookimpl
        def register_metadata_sources(self, register):
            register(Notes())

    plugin_manager.register(Plugin(), "notes-plugin")
    assert plugin_manager.registered["metadata_sources"]["notes"].plugin == "notes-plugin"
    assert {"civitai", "hub", "notes"} <= set(plugin_manager.names("metadata_sources"))
    assert all(isinstance(plugin_manager.get("metadata_sources", n), MetadataSource) for n in ("civitai", "hub"))
    version = registry.import_file(small_adapter(tmp_path / "a.safetensors"), "me/a").version
    report = enrich(registry, sources=["notes"])
    assert report.versions == {version.ref: {"notes": ["notes", "lineage"]}}
    values = get_metadata(registry, version.ref)
    assert (values["notes"].value, values["notes"].source) == (f"seen {version.adapter_file.sha256[:8]}", "notes")
    code, out, _ = run_cli("plugins")
    assert code == 0 and "metadata sources: notes" in out
    with pytest.raises(UnknownNameError, match="unknown metadata source 'nope'; available: civitai, hub, notes"):
        enrich(registry, sources=["nope"])


def test_hook_register_evaluators(plugin_manager):
    """An evaluator plugin registers; the host checks its metrics and answers, and aggregates what it returns."""
    from lorastack.core.evaluation import score_images
    from lorastack.plugins.api import EvalImage, EvaluationError, Evaluator, Metric

    class Brightness:
        name, description, options = "brightness", "Mean pixel value.", ()
        metrics = (Metric("bright", True, "mean pixel value, 0-1"),)

        def score(self, request, options):
            return [{"bright": i.image.convert("L").resize((1, 1), Image.BOX).getpixel((0, 0)) / 255}
                    for i in request.images]  # fmt: skip

    class Plugin:
        @hookimpl
        def register_evaluators(self, register):
            register(Brightness())

    plugin_manager.register(Plugin(), "brightness-plugin")
    assert plugin_manager.registered["evaluators"]["brightness"].plugin == "brightness-plugin"
    assert {"clip", "dino", "leakage", "toy", "brightness"} <= set(plugin_manager.names("evaluators"))
    assert all(isinstance(plugin_manager.get("evaluators", n), Evaluator) for n in ("clip", "dino", "toy"))
    images = [EvalImage(Image.new("RGB", (4, 4), (v, v, v)), "p", s, w, None if w == 0 else "a")
              for s, (v, w) in enumerate([(0, 0.0), (255, 1.0), (51, 1.0)])]  # fmt: skip
    (base, adapter) = score_images([(plugin_manager.get("evaluators", "brightness"), {})], images)
    assert (base.adapter, base.mean, base.n) == (None, 0.0, 1)
    assert (adapter.adapter, adapter.n) == ("a", 2) and adapter.mean == pytest.approx(0.6)
    assert adapter.std == pytest.approx(0.4) and adapter.higher_is_better

    class Wrong(Brightness):
        name = "wrong"

        def score(self, request, options):
            return [{"dark": 1.0}]

    with pytest.raises(EvaluationError, match="'dark', which is not one of its metrics: bright"):
        score_images([(Wrong(), {})], images[:1])

    class NoMetrics(Brightness):
        name, metrics = "nometrics", ()

    class Bad:
        @hookimpl
        def register_evaluators(self, register):
            register(NoMetrics())

    with pytest.raises(PluginError, match="metrics must be a non-empty sequence of Metric"):
        plugin_manager.register(Bad(), "bad-evaluators")
    code, out, _ = run_cli("plugins")
    assert code == 0 and "evaluators: brightness" in out
