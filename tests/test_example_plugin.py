"""The third-party example plugin (examples/lorastack-plugin-example), installed with pip, working through the CLI."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
from cli_helpers import run_cli
from PIL import Image

INSTALL = "pip install ./examples/lorastack-plugin-example (the README's test command does)"
SOURCE = Path(__file__).resolve().parent.parent / "examples" / "lorastack-plugin-example" / "lorastack_plugin_example"
# third-party plugins load in these tests only (the global fixture keeps them out of the others)
pytestmark = pytest.mark.third_party_plugins


@pytest.fixture(autouse=True)
def _installed():
    try:
        metadata.distribution("lorastack-plugin-example")
    except metadata.PackageNotFoundError:
        pytest.fail(f"the example plugin is not installed: {INSTALL}")


def test_the_installed_copy_is_the_example_in_the_repository():
    import lorastack_plugin_example

    installed = Path(lorastack_plugin_example.__file__).read_text()
    assert installed == (SOURCE / "__init__.py").read_text(), f"the installed example plugin is stale: {INSTALL}"


def _images(folder):
    folder.mkdir()
    Image.new("RGB", (32, 32), (220, 30, 30)).save(folder / "one.png")
    Image.new("RGB", (32, 32), (30, 60, 230)).save(folder / "two.png")
    return folder


def test_it_is_listed_with_its_version_and_names():
    code, out, _ = run_cli("plugins", "--json")
    assert code == 0
    plugins = {p["name"]: p for p in json.loads(out)["plugins"]}
    example = plugins["example"]
    assert (example["distribution"], example["version"], example["builtin"]) == (
        "lorastack-plugin-example", "0.1.0", False,
    )  # fmt: skip
    assert example["provides"] == {"captioners": ["colour"], "dataset_sources": ["listfile"]}
    assert example["hooks"] == ["register_captioners", "register_dataset_sources"]


def test_its_dataset_source_works_through_the_cli(tmp_path):
    folder = _images(tmp_path / "shots")
    (folder / "shots.list").write_text("one.png\ta red thing\ntwo.png\ta blue thing\n# comment\ngone.png\tlost\n")
    code, out, err = run_cli("dataset", folder / "shots.list", "--json")  # recognised by its .list suffix
    assert code == 0, err
    data = json.loads(out)
    assert data["source"] == "listfile" and data["count"] == 2
    assert [i["caption"] for i in data["items"]] == ["a red thing", "a blue thing"]
    assert data["skipped"] == [{"source": "gone.png (line 4)", "reason": "no such file"}]


def test_its_captioner_works_through_the_cli(tmp_path):
    folder = _images(tmp_path / "photos")
    code, _, err = run_cli("caption", folder, "--captioner", "colour", "--option", "prefix=a photo of aawxbc,")
    assert code == 0, err
    assert (folder / "one.txt").read_text().strip() == "a photo of aawxbc, a red image"
    assert (folder / "two.txt").read_text().strip() == "a photo of aawxbc, a blue image"
    code, _, err = run_cli("caption", folder, "--captioner", "colour", "--option", "colour=red")
    assert code == 1 and "has no option 'colour'; its options: prefix, noun" in err


def test_limiting_plugins_leaves_it_out(monkeypatch):
    monkeypatch.setenv("LORASTACK_LOAD_PLUGINS", "")
    code, out, _ = run_cli("plugins", "--json")
    assert code == 0
    names = {p["name"] for p in json.loads(out)["plugins"]}
    assert "example" not in names and "lorastack-sources" in names
