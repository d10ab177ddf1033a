"""``lorastack link``: a folder A1111 or ComfyUI reads, made of links to the registry's files, kept up to date, and
never touching what it did not make."""

import json
import os

import pytest
from cli_helpers import run_cli

from lorastack.adapters import read_adapter
from lorastack.registry.errors import InvalidValueError
from lorastack.registry.linking import MANIFEST, link_library
from lorastack.testing.registry import small_adapter


@pytest.fixture
def stocked(registry, tmp_path):
    for i, name in enumerate(("me/style", "me/figure", "other")):
        path = small_adapter(tmp_path / f"{i}.safetensors", seed=i)
        registry.import_file(path, name, trigger_words=[f"word{i}"] if i < 2 else None)
    return registry


def test_a1111_layout_links_every_adapter_with_its_sidecar(stocked, tmp_path):
    out = tmp_path / "loras"
    report = link_library(stocked, out, "a1111")
    assert sorted(report.created) == sorted(
        ["me/style.safetensors", "me/style.json", "me/figure.safetensors", "me/figure.json", "other.safetensors",
         "other.json"]
    )  # fmt: skip
    link = out / "me" / "style.safetensors"
    assert link.is_symlink()
    _, stored = stocked.adapter_path("me/style", verify=False)
    assert os.path.samefile(link, stored) and read_adapter(link).layers  # the UI reads the registry's own file
    sidecar = json.loads((out / "me" / "style.json").read_text())
    assert sidecar["activation text"] == "word0" and sidecar["notes"] == "lorastack me/style@1"
    assert sidecar["sd version"] in ("SD1", "SD2", "SDXL", "Unknown") and "preferred weight" in sidecar
    again = link_library(stocked, out, "a1111")  # nothing changed: nothing written
    assert (again.created, again.updated, again.removed, again.unchanged) == ([], [], [], 6)


def test_a_rerun_follows_the_registry_and_keeps_what_the_user_changed(stocked, tmp_path):
    out = tmp_path / "loras"
    link_library(stocked, out, "a1111")
    edited = out / "me" / "figure.json"
    edited.write_text(json.dumps({"activation text": "my own words", "preferred weight": 0.7}))
    (out / "mine.safetensors").write_bytes(b"a user's own file")
    new = small_adapter(tmp_path / "v2.safetensors", seed=9)
    stocked.import_file(new, "me/style")  # a version 2: the link follows latest
    stocked.remove("other", all_versions=True)
    report = link_library(stocked, out, "a1111")
    assert "me/style.safetensors" in report.updated and "me/style.json" in report.updated
    assert set(report.removed) == {"other.safetensors", "other.json"} and not (out / "other.json").exists()
    assert "me/figure.json" in report.kept and json.loads(edited.read_text())["activation text"] == "my own words"
    assert (out / "mine.safetensors").read_bytes() == b"a user's own file"  # not lorastack's: untouched
    _, stored = stocked.adapter_path("me/style", verify=False)
    assert os.path.samefile(out / "me" / "style.safetensors", stored)


def test_a_file_in_the_way_is_never_replaced(stocked, tmp_path):
    out = tmp_path / "loras"
    (out / "me").mkdir(parents=True)
    (out / "me" / "style.safetensors").write_bytes(b"someone else's")
    report = link_library(stocked, out, "comfyui")
    assert (
        "me/style.safetensors" in report.kept and (out / "me" / "style.safetensors").read_bytes() == b"someone else's"
    )
    meta = json.loads((out / "me" / "figure.metadata.json").read_text())
    assert meta["model_name"] == "me/figure" and meta["civitai"]["trainedWords"] == ["word1"]
    assert meta["sha256"] == stocked.resolve("me/figure").adapter_file.sha256


def test_a_tampered_list_cannot_make_it_delete_outside_the_folder(stocked, tmp_path):
    out = tmp_path / "loras"
    link_library(stocked, out, "a1111")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"]["../victim.txt"] = {"kind": "sidecar", "sha256": "x"}
    manifest["files"][str(victim)] = {"kind": "sidecar", "sha256": "x"}
    (out / MANIFEST).write_text(json.dumps(manifest))
    link_library(stocked, out, "a1111")
    assert victim.read_text() == "keep me"
    with pytest.raises(InvalidValueError, match="unknown layout 'forge'; choose one of a1111, comfyui"):
        link_library(stocked, out, "forge")


def test_the_command(stocked, tmp_path, lorastack_home):
    code, out, err = run_cli("link", tmp_path / "loras", "--layout", "a1111", "--filter", "word0", "--json")
    assert code == 0, err
    assert sorted(json.loads(out)["created"]) == ["me/style.json", "me/style.safetensors"]
    code, out, _ = run_cli("link", tmp_path / "loras", "--layout", "a1111", "--filter", "word0")
    assert "0 created, 0 updated, 0 removed, 2 unchanged" in out


def test_metadata_and_previews_reach_the_ui_and_scan_reads_the_folder_back(stocked, tmp_path, monkeypatch):
    import io

    from PIL import Image

    from lorastack.registry import Registry
    from lorastack.registry.metadata import get_metadata, set_metadata
    from lorastack.registry.previews import add_preview
    from lorastack.registry.scan import scan

    set_metadata(stocked, "me/style", {"weight": 0.8, "negative": "blurry", "notes": "my favourite"}, "user")
    png = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 200, 10)).save(png, "PNG")
    add_preview(stocked, "me/style", png.getvalue(), "user")
    out = tmp_path / "loras"
    link_library(stocked, out, "a1111")
    sidecar = json.loads((out / "me" / "style.json").read_text())
    assert sidecar["preferred weight"] == 0.8 and sidecar["negative text"] == "blurry"
    assert sidecar["notes"].startswith("my favourite")
    preview = out / "me" / "style.preview.png"
    assert preview.is_symlink() and Image.open(preview).size == (32, 24)
    # what A1111 would see, scanned by lorastack into another home: the same files, the sidecar's values
    monkeypatch.setenv("LORASTACK_HOME", str(tmp_path / "elsewhere"))
    other = Registry()
    report = scan(other, [out])
    found = {row["name"]: row for row in other.list()}
    assert len(found) == 3, report
    style = next(name for name in found if name.endswith("style"))
    assert other.resolve(style).adapter_file.sha256 == stocked.resolve("me/style").adapter_file.sha256
    values = get_metadata(other, style)
    assert values["weight"].value == 0.8 and values["weight"].source == "sidecar"
    assert other.resolve(style).trigger_words == ["word0"] or values["trigger_groups"].value == [["word0"]]
    other.close()


CHILD = """
import sys
from lorastack.registry import Registry
from lorastack.registry.linking import link_library
link_library(Registry(), sys.argv[1], "a1111")
"""


@pytest.mark.parametrize("point", ["registry.link.before-link#3", "registry.link.before-list"])
def test_a_killed_link_run_is_finished_by_the_next(stocked, tmp_path, point):
    import signal
    import subprocess
    import sys

    out = tmp_path / "loras"
    env = {**os.environ, "LORASTACK_CRASH_AT": point}
    done = subprocess.run([sys.executable, "-c", CHILD, str(out)], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert not (out / MANIFEST).exists()
    report = link_library(stocked, out, "a1111")
    assert not report.kept  # what the killed run made is taken as lorastack's own, nothing is left behind
    assert len(report.created) + report.unchanged == 6
    assert not [p for p in out.rglob("*") if "lorastack-tmp" in p.name]
    again = link_library(stocked, out, "a1111")
    assert (again.created, again.updated, again.kept, again.unchanged) == ([], [], {}, 6)
