"""Metadata per version with its source: precedence, validation, previews as blobs, crash safety."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from PIL import Image

from lorastack.registry import InvalidValueError
from lorastack.registry.metadata import get_metadata, set_metadata, validate_value
from lorastack.registry.previews import MAX_PREVIEW_BYTES, add_preview, list_previews
from lorastack.testing.registry import small_adapter


def png(colour=(200, 30, 30), size=(64, 48), fmt="PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, fmt)
    return out.getvalue()


@pytest.fixture
def imported(registry, tmp_path):
    path = small_adapter(tmp_path / "style.safetensors", trigger="zxc style", ss_sd_model_name="ponyDiffusionV6XL")
    return registry.import_file(path, "me/style").version.ref


def test_header_values_show_with_their_source(registry, imported):
    values = get_metadata(registry, imported)
    assert values["trigger_groups"].value == [["zxc style"]] and values["trigger_groups"].source == "header"
    assert values["lineage"].value == "Pony" and values["base_model"].value == "ponyDiffusionV6XL"
    assert "trigger_groups" not in get_metadata(registry, imported, derived=False)


def test_a_user_value_is_never_replaced_by_another_source_unless_asked(registry, imported):
    set_metadata(registry, imported, {"weight": 0.8, "notes": "mine"}, "user")
    report = set_metadata(registry, imported, {"weight": 1.0, "notes": "theirs", "license": "mit"}, "civitai")
    assert report.changed == ["license"] and report.kept == {"weight": "user", "notes": "user"}
    values = get_metadata(registry, imported)
    assert (values["weight"].value, values["weight"].source) == (0.8, "user")
    assert (values["license"].value, values["license"].source) == ("mit", "civitai")
    forced = set_metadata(registry, imported, {"weight": 1.0}, "civitai", overwrite=True)
    assert forced.changed == ["weight"] and get_metadata(registry, imported)["weight"].source == "civitai"


def test_a_more_trusted_source_replaces_a_less_trusted_one_and_not_the_reverse(registry, imported):
    set_metadata(registry, imported, {"lineage": "SDXL"}, "hub")
    assert set_metadata(registry, imported, {"lineage": "Illustrious"}, "sidecar").changed == ["lineage"]
    assert set_metadata(registry, imported, {"lineage": "NoobAI"}, "civitai").kept == {"lineage": "sidecar"}
    assert get_metadata(registry, imported)["lineage"].value == "Illustrious"
    # the stored value hides the header's
    assert set_metadata(registry, imported, {"trigger_groups": [["a", "b"], ["c"]]}, "civitai").changed
    assert get_metadata(registry, imported)["trigger_groups"].value == [["a", "b"], ["c"]]


def test_clearing_is_the_users_and_values_are_checked_before_anything_is_stored(registry, imported):
    set_metadata(registry, imported, {"notes": "x"}, "user")
    with pytest.raises(InvalidValueError, match="preferred weight"):
        set_metadata(registry, imported, {"license": "mit", "weight": "heavy"}, "user")
    assert "license" not in get_metadata(registry, imported)  # nothing of the failed call was stored
    assert set_metadata(registry, imported, {"notes": None}, "civitai").kept == {"notes": "user"}
    set_metadata(registry, imported, {"notes": None}, "user")
    assert "notes" not in get_metadata(registry, imported)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("weight", float("nan"), "preferred weight"),
        ("weight", 11, "preferred weight"),
        ("weight", True, "preferred weight"),
        ("trigger_groups", "a, b", "groups"),
        ("trigger_groups", [["x" * 1001]], "1,000 characters"),
        ("lineage", "two\nlines", "one line"),
        ("air", "civitai:1@2", "AIR"),
        ("url", "javascript:alert(1)", "web page"),
        ("civitai_model_id", -3, "positive integer"),
        ("hub_repo", "no-slash", "Hub repo"),
        ("notes", "\ud800", "UTF-8"),
        ("colour", "red", "unknown metadata field 'colour'; fields: trigger_groups"),
    ],
)
def test_wrong_values_are_refused_in_one_line(name, value, message):
    with pytest.raises(InvalidValueError, match=message) as e:
        validate_value(name, value)
    assert "\n" not in str(e.value)


def test_previews_are_blobs_with_thumbnails_kept_by_gc_and_verified(registry, imported, tmp_path):
    image = png(size=(600, 300))
    preview = add_preview(registry, imported, image, "user")
    assert (preview.width, preview.height, preview.media_type) == (600, 300, "image/png")
    assert add_preview(registry, imported, image, "civitai") == preview  # the same image once
    files = {f.role: f for f in registry.resolve(imported).files}
    assert registry.blobs.path(files["preview"].sha256).read_bytes() == image
    with Image.open(registry.blobs.path(files["thumbnail"].sha256)) as thumb:
        assert max(thumb.size) == 256 and thumb.format == "JPEG"
    assert registry.gc(grace=0).blobs == [] and registry.verify().clean
    assert list_previews(registry, imported) == [preview]
    registry.remove(imported, force=True)
    assert not registry.blobs.path(preview.sha256).exists()  # rm frees previews like the adapter file


def test_a_thumbnail_is_made_once_for_an_image_seen_before(registry, imported, tmp_path, monkeypatch):
    from lorastack.registry import previews

    other = registry.import_file(small_adapter(tmp_path / "b.safetensors", seed=3), "me/other").version.ref
    first = add_preview(registry, imported, png(), "user")
    monkeypatch.setattr(previews, "check_image", lambda *a: pytest.fail("decoded again"))
    assert add_preview(registry, other, png(), "user").thumbnail_sha256 == first.thumbnail_sha256


@pytest.mark.parametrize(
    "data, message",
    [
        (b"GIF89a" + b"\0" * 40, "not a readable"),
        (png()[:60], "not a readable"),
        (png(fmt="BMP"), "a BMP image"),
        (b"\0" * (MAX_PREVIEW_BYTES + 1), "a preview is at most"),
    ],
)
def test_bad_previews_are_refused_and_nothing_is_recorded(registry, imported, data, message):
    with pytest.raises(InvalidValueError, match=message):
        add_preview(registry, imported, data, "user")
    assert list_previews(registry, imported) == [] and len(registry.resolve(imported).files) == 1


def test_a_decompression_bomb_is_refused_before_decoding(registry, imported):
    out = io.BytesIO()
    Image.new("1", (10_000, 6_000)).save(out, "PNG")  # 60 MP, a few KB
    with pytest.raises(InvalidValueError, match="pixels"):
        add_preview(registry, imported, out.getvalue(), "user")


_CHILD = """
import sys
from lorastack.registry import Registry
from lorastack.registry.metadata import set_metadata
from lorastack.registry.previews import add_preview
r = Registry()
set_metadata(r, sys.argv[1], {"notes": "new", "weight": 0.5}, "user")
add_preview(r, sys.argv[1], open(sys.argv[2], "rb").read(), "user")
"""


@pytest.mark.parametrize(
    "point", ["registry.metadata.before-commit", "registry.preview.stored", "registry.preview.before-commit"]
)
def test_a_kill_leaves_the_old_metadata_or_the_new(registry, imported, tmp_path, point):
    set_metadata(registry, imported, {"notes": "old"}, "user")
    registry.close()
    image = tmp_path / "p.png"
    image.write_bytes(png())
    env = {**os.environ, "LORASTACK_CRASH_AT": point}
    proc = subprocess.run([sys.executable, "-c", _CHILD, imported, str(image)], env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    values = get_metadata(registry, imported)
    if point == "registry.metadata.before-commit":
        assert values["notes"].value == "old" and "weight" not in values
    else:
        assert values["notes"].value == "new" and values["weight"].value == 0.5
    assert list_previews(registry, imported) == [] and registry.verify().clean
    assert [f.role for f in registry.resolve(imported).files] == ["adapter"]
