"""Every sidecar format read, bounded and validated; wrong types and encodings reported and skipped."""

from __future__ import annotations

import io
import json
import os

import pytest
from PIL import Image

from lorastack.registry.metadata import get_metadata, set_metadata
from lorastack.registry.previews import list_previews
from lorastack.registry.sidecars import (
    MAX_SIDECAR_BYTES,
    apply_sidecars,
    civitai_version_values,
    lineage_label,
    read_sidecars,
)
from lorastack.testing.registry import small_adapter

CIVITAI_RECORD = {
    "id": 456,
    "modelId": 123,
    "name": "v2",
    "baseModel": "Illustrious",
    "trainedWords": ["zxc girl, red hair", "zxc armour"],
    "description": "<p>Second <b>version</b></p>",
    "model": {"name": "Zxc Character", "type": "LORA", "tags": ["character", "anime"]},
    "images": [{"url": "https://image.example/1.png", "type": "image"}, {"url": "https://x/v.mp4", "type": "video"}],
}


def _png(path, colour=(10, 200, 10)):
    out = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(out, "PNG")
    path.write_bytes(out.getvalue())
    return path


@pytest.fixture
def adapter(tmp_path):
    return small_adapter(tmp_path / "zxc.safetensors", trigger="from header", ss_tag_frequency=json.dumps(
        {"1_zxc": {"1girl": 30, "red hair": 12, "zxc": 40}}))  # fmt: skip


def test_a1111_user_metadata(adapter):
    adapter.with_name("zxc.json").write_text(json.dumps({
        "description": "A test", "sd version": "SD1", "activation text": "zxc, red hair",
        "preferred weight": 0.7, "negative text": "blurry", "notes": "works at 0.7",
    }))  # fmt: skip
    found = read_sidecars(adapter)
    assert found.values == {
        "trigger_groups": [["zxc", "red hair"]], "weight": 0.7, "negative": "blurry", "notes": "works at 0.7",
        "description": "A test", "sd_version": "SD1",
    }  # fmt: skip
    assert found.origins["weight"] == "zxc.json" and found.problems == []


def test_training_tags_come_from_the_header_and_are_never_trigger_words(adapter):
    found = read_sidecars(adapter)
    assert found.header["training_tags"] == ["zxc", "1girl", "red hair"]
    assert found.header["trigger_groups"] == [["from header"]]
    assert "trigger_groups" not in found.values


def test_civitai_helper_info(adapter):
    adapter.with_name("zxc.civitai.info").write_text(json.dumps(CIVITAI_RECORD))
    found = read_sidecars(adapter)
    assert found.values["trigger_groups"] == [["zxc girl", "red hair"], ["zxc armour"]]
    assert found.values["lineage"] == "Illustrious" and found.values["title"] == "Zxc Character"
    assert found.values["air"] == "urn:air:sdxl:lora:civitai:123@456"
    assert (found.values["civitai_model_id"], found.values["civitai_version_id"]) == (123, 456)
    assert found.values["description"] == "Second  version"
    assert found.preview_urls == ["https://image.example/1.png"]  # videos are not previews


def test_lora_manager_metadata(adapter):
    adapter.with_name("zxc.metadata.json").write_text(json.dumps({
        "model_name": "Zxc", "base_model": "Pony", "notes": "n", "tags": ["style"],
        "usage_tips": json.dumps({"strength": 0.6}), "civitai": CIVITAI_RECORD,
    }))  # fmt: skip
    found = read_sidecars(adapter)
    assert found.values["title"] == "Zxc" and found.values["weight"] == 0.6
    assert found.values["lineage"] == "Pony"  # the manager's own base_model before its Civitai record
    assert found.values["tags"] == ["style"] and found.values["civitai_version_id"] == 456


def test_previews_beside_the_file(adapter):
    for name in ("zxc.preview.png", "zxc.preview.webp", "zxc.png", "other.png"):
        _png(adapter.with_name(name))
    assert [p.name for p in read_sidecars(adapter).previews] == ["zxc.preview.png", "zxc.preview.webp", "zxc.png"]


def test_the_a1111_file_wins_over_the_others(adapter):
    adapter.with_name("zxc.json").write_text(json.dumps({"activation text": "mine"}))
    adapter.with_name("zxc.civitai.info").write_text(json.dumps(CIVITAI_RECORD))
    assert read_sidecars(adapter).values["trigger_groups"] == [["mine"]]


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"\xff\xfe{\x00}\x00", "is not UTF-8 text"),
        (b"{'single': 'quotes'}", "is not JSON"),
        (b"[1, 2]", "holds a JSON list, not an object"),
        (b"[" * 100_000, "nests JSON too deeply"),
    ],
)
def test_broken_files_are_reported_and_skipped(adapter, content, reason):
    adapter.with_name("zxc.json").write_bytes(content)
    adapter.with_name("zxc.civitai.info").write_text(json.dumps(CIVITAI_RECORD))
    found = read_sidecars(adapter)
    assert [(p.path.rsplit("/", 1)[1], reason in p.reason) for p in found.problems] == [("zxc.json", True)]
    assert found.values["lineage"] == "Illustrious"  # the other sidecar is still read


def test_wrong_types_are_reported_per_value_and_the_rest_kept(adapter):
    adapter.with_name("zxc.json").write_text(json.dumps({
        "activation text": ["not", {"a": "string"}], "preferred weight": "heavy", "notes": 42,
        "negative text": "fine",
    }))  # fmt: skip
    found = read_sidecars(adapter)
    assert found.values == {"negative": "fine"}
    keys = sorted(p.reason.split(":")[0] for p in found.problems)
    assert keys == ["'activation text'", "'notes'", "'preferred weight'"]
    assert all("skipped" in p.reason and "\n" not in p.reason for p in found.problems)


def test_oversized_and_special_files_are_not_read(adapter, tmp_path):
    adapter.with_name("zxc.json").write_bytes(b" " * (MAX_SIDECAR_BYTES + 1))
    os.mkfifo(adapter.with_name("zxc.civitai.info"))  # reading it would block for ever
    adapter.with_name("zxc.metadata.json").symlink_to(tmp_path / "nowhere")
    found = read_sidecars(adapter)
    reasons = sorted(p.reason for p in found.problems)
    assert len(reasons) == 3 and "over" in reasons[0] and all("skipped" in r for r in reasons)


def test_lineage_labels():
    assert lineage_label("ponyDiffusionV6XL_v6") == "Pony"
    assert lineage_label("Illustrious") == "Illustrious" and lineage_label("NoobAI-XL 1.1") == "NoobAI"
    assert lineage_label("Flux.1 D") == "FLUX.1-dev" and lineage_label("flux1-schnell") == "FLUX.1-schnell"
    assert lineage_label("SDXL 1.0") == "SDXL" and lineage_label("SD 1.5") == "SD 1.x"
    assert lineage_label("sdxl_base_v1-0") == "SDXL" and lineage_label("something else") is None


def test_a_malformed_civitai_record_gives_nothing_wrong():
    values, urls = civitai_version_values({"trainedWords": "x", "modelId": True, "images": "no", "model": []})
    assert values == {} and urls == []


def test_applying_sidecars_records_each_source_and_keeps_the_users_values(registry, adapter):
    adapter.with_name("zxc.json").write_text(json.dumps({"activation text": "zxc", "notes": "from A1111"}))
    adapter.with_name("zxc.civitai.info").write_text(json.dumps(CIVITAI_RECORD))
    _png(adapter.with_name("zxc.preview.png"))
    adapter.with_name("zxc.png").write_bytes(b"not an image")
    ref = registry.import_file(adapter, "me/zxc").version.ref
    set_metadata(registry, ref, {"notes": "mine"}, "user")
    report = apply_sidecars(registry, ref, read_sidecars(adapter))
    assert report["kept"] == {"notes": "user"} and report["previews"] == 1
    assert [p["path"].rsplit("/", 1)[1] for p in report["problems"]] == ["zxc.png"]
    values = get_metadata(registry, ref)
    assert (values["notes"].value, values["notes"].source) == ("mine", "user")
    assert (values["trigger_groups"].value, values["trigger_groups"].source) == ([["zxc"]], "sidecar")
    assert (values["training_tags"].source, values["air"].source) == ("header", "sidecar")
    assert [p.source for p in list_previews(registry, ref)] == ["sidecar"]
    again = apply_sidecars(registry, ref, read_sidecars(adapter))
    assert again["changed"] == [] and len(list_previews(registry, ref)) == 1


def test_a_batch_records_every_files_values_and_a_refused_value_costs_only_its_own_file(registry, tmp_path):
    from pathlib import Path

    from lorastack.registry.metadata import get_metadata
    from lorastack.registry.sidecars import Sidecars, apply_sidecars_many
    from lorastack.testing.registry import small_adapter

    for i in range(3):
        registry.import_file(small_adapter(tmp_path / f"{i}.safetensors", seed=i), f"lib/a{i}")
    good = [(f"lib/a{i}", Sidecars(Path(f"{i}.safetensors"), values={"weight": 0.5 + i / 10})) for i in range(2)]
    bad = ("lib/a2", Sidecars(Path("2.safetensors"), values={"weight": 99.0}))  # past MAX_WEIGHT
    reports = apply_sidecars_many(registry, [good[0], bad, good[1]])
    assert [r["ref"] for r in reports] == ["lib/a0@1", "lib/a2", "lib/a1@1"]
    assert reports[1]["problems"] and "99" in reports[1]["problems"][0]["reason"]
    assert get_metadata(registry, "lib/a0")["weight"].value == 0.5
    assert get_metadata(registry, "lib/a1")["weight"].value == 0.6
    assert "weight" not in get_metadata(registry, "lib/a2")
