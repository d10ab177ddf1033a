"""`lorastack edit`, `show` with metadata, `list --lineage/--tag/--search` on metadata, `import` reading sidecars."""

from __future__ import annotations

import io
import json

import pytest
from cli_helpers import run_cli
from PIL import Image

from lorastack.testing.registry import small_adapter


@pytest.fixture
def two(lorastack_home, tmp_path):
    for i, name in enumerate(("me/pony", "me/flux")):
        code, _, err = run_cli("import", str(small_adapter(tmp_path / f"{i}.safetensors", seed=i)), "--name", name)
        assert code == 0, err
    return tmp_path


def _image(path):
    out = io.BytesIO()
    Image.new("RGB", (300, 200), (1, 2, 3)).save(out, "JPEG")
    path.write_bytes(out.getvalue())
    return path


def test_edit_then_show_prints_every_value_with_its_source(two):
    code, out, err = run_cli("edit", "me/pony", "--trigger", "zxc, red hair", "--trigger", "zxc armour", "--weight",
                             "0.8", "--note", "best at 0.8", "--lineage", "Pony", "--keyword", "character",
                             "--preview", str(_image(two / "p.jpg")), "--json")  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert data["ref"] == "me/pony@1" and len(data["previews"]) == 1
    assert set(data["changed"]) == {"trigger_groups", "weight", "notes", "lineage", "tags"}
    code, out, _ = run_cli("show", "me/pony")
    assert "trigger groups  zxc, red hair | zxc armour  [user]" in out
    assert "weight          0.8  [user]" in out and "lineage         Pony  [user]" in out
    assert "preview         previews/" in out and "300×200  [user]" in out
    shown = json.loads(run_cli("show", "me/pony", "--json")[1])
    assert (shown["meta"]["weight"]["value"], shown["meta"]["weight"]["source"]) == (0.8, "user")
    assert shown["previews"][0]["media_type"] == "image/jpeg" and shown["meta"]["lineage"]["source"] == "user"


def test_edit_refuses_bad_values_in_one_line_and_writes_nothing(two):
    code, _, err = run_cli("edit", "me/pony", "--weight", "12")
    assert code == 1 and err.strip() == "Error: preferred weight, a number in -10…10; got 12"
    code, _, err = run_cli("edit", "me/pony", "--note", "x", "--preview", str(two / "missing.png"))
    assert code == 1 and "missing.png: cannot be read" in err
    assert "notes" not in json.loads(run_cli("show", "me/pony", "--json")[1])["meta"]
    code, _, err = run_cli("edit", "me/pony", "--clear", "colour")
    assert code == 2 and "'colour' is not a field" in err
    code, _, err = run_cli("edit", "me/pony")
    assert code == 2 and "say what to write" in err


def test_clear_removes_a_value(two):
    run_cli("edit", "me/pony", "--note", "x")
    code, out, _ = run_cli("edit", "me/pony", "--clear", "notes")
    assert code == 0 and out.strip() == "me/pony@1: notes written"
    assert "notes" not in json.loads(run_cli("show", "me/pony", "--json")[1])["meta"]


def test_list_filters_by_lineage_tag_and_metadata_text(two):
    run_cli("edit", "me/pony", "--lineage", "Pony", "--keyword", "character", "--note", "Glowing armour")
    run_cli("edit", "me/flux", "--lineage", "FLUX.1-dev")
    run_cli("tag", "me/flux", "favourite")

    def names(*args):
        code, out, err = run_cli("list", *args, "--json")
        assert code == 0, err
        return [r["name"] for r in json.loads(out)]

    assert names("--lineage", "pony") == ["me/pony"]
    assert names("--lineage", "FLUX.1-dev") == ["me/flux"] and names("--lineage", "Illustrious") == []
    assert names("--tag", "character") == ["me/pony"] and names("--tag", "favourite") == ["me/flux"]
    assert names("--tag", "charact") == []  # a whole tag, not a part of one
    assert names("--search", "glowing") == ["me/pony"] and names("--search", "me/") == ["me/flux", "me/pony"]
    code, out, _ = run_cli("list", "--lineage", "SDXL")
    assert code == 0 and out.strip() == "no adapters match"


def test_import_reads_the_sidecars_beside_the_file(lorastack_home, tmp_path):
    path = small_adapter(tmp_path / "zxc.safetensors")
    path.with_name("zxc.json").write_text(json.dumps({"activation text": "zxc", "preferred weight": "heavy"}))
    _image(path.with_name("zxc.preview.jpeg"))
    code, out, err = run_cli("import", str(path), "--name", "me/zxc")
    assert code == 0 and "skipped" in err and "'preferred weight'" in err
    shown = json.loads(run_cli("show", "me/zxc", "--json")[1])
    assert shown["meta"]["trigger_groups"] == {**shown["meta"]["trigger_groups"], "value": [["zxc"]],
                                               "source": "sidecar"}  # fmt: skip
    assert [p["source"] for p in shown["previews"]] == ["sidecar"]
    code, out, _ = run_cli("import", str(path), "--name", "me/zxc", "--json")
    assert code == 0 and json.loads(out)["sidecars"]["changed"] == []  # a second import changes nothing
