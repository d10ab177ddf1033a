"""The built-in dataset sources (folder, zip, hf) on real image files, good and broken."""

from __future__ import annotations

import io
import json
import re
import sys
import zipfile

import pytest
from PIL import Image

from lorastack.core.data import DatasetError, image_key, open_dataset
from lorastack.core.interfaces import DatasetItem, PluginOptionError, Skipped
from lorastack.plugins.manager import UnknownNameError, get_dataset_source
from lorastack.testing.images import (
    BLUE,
    RED,
    hf_dataset,
    save_hf_dataset,
    seed_hf_dataset_cache,
    write_image_folder,
    zip_folder,
)


@pytest.fixture(autouse=True)
def _fresh_plugins(plugin_manager):
    """Every test looks sources up in a freshly loaded manager (the built-ins come from the entry point)."""
    return plugin_manager


@pytest.fixture
def photos(tmp_path):
    return write_image_folder(tmp_path / "photos")


def close(a, b, tolerance=16):
    return all(abs(x - y) <= tolerance for x, y in zip(a, b))


def check_images(dataset, folder, prefix=""):
    """``dataset`` holds exactly the good images of ``folder``, decoded right, and reports the bad ones by name."""
    assert [item.source for item in dataset] == [prefix + name for name in folder.good]
    assert sorted(s.source for s in dataset.skipped) == [prefix + name for name in folder.bad]
    for item in dataset:
        name = item.source.removeprefix(prefix)
        assert item.caption == folder.captions[name]
        assert item.image.mode == "RGB"
        assert item.image.size == folder.sizes[name]
        (x, y), rgb = folder.pixels[name]
        assert close(item.image.getpixel((x, y)), rgb), (name, item.image.getpixel((x, y)), rgb)
        assert item.key == image_key((folder.root / name).read_bytes())
        assert item.concept == folder.concepts.get(name)


# --- registration and detection -------------------------------------------------------------------------------------


def test_builtin_sources_load_through_the_entry_point(plugin_manager):
    assert plugin_manager.plugins["lorastack-sources"].builtin
    assert {"folder", "zip", "hf"} <= set(plugin_manager.names("dataset_sources"))
    for name in ("folder", "zip", "hf"):
        source = get_dataset_source(name)
        assert source.name == name and source.description and source.options


def test_unknown_source_lists_the_available_ones(photos):
    with pytest.raises(UnknownNameError) as error:
        open_dataset(photos.root, source="nope")
    message = str(error.value)
    assert "'nope'" in message and all(name in message for name in ("folder", "hf", "zip"))


def test_detection_picks_the_source_by_location(photos, tmp_path):
    archive = zip_folder(photos.root, tmp_path / "photos.zip")
    saved = save_hf_dataset(photos, tmp_path / "saved")
    assert open_dataset(photos.root, allow_empty=True).source == "folder"
    assert open_dataset(archive, allow_empty=True).source == "zip"
    assert open_dataset(saved, allow_empty=True).source == "hf"  # a folder, but a save_to_disk one
    assert get_dataset_source("hf").detect("hf:owner/name")
    assert not get_dataset_source("folder").detect(str(saved))
    assert not get_dataset_source("zip").detect(str(tmp_path / "missing.zip"))
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")


def test_bad_option_values_are_refused_before_reading(photos):
    with pytest.raises(PluginOptionError, match="caption-extension '.md' is not one of"):
        open_dataset(photos.root, options={"caption_extension": ".md"})
    with pytest.raises(PluginOptionError, match="has no option 'colour'"):
        open_dataset(photos.root, options={"colour": "red"})


# --- folder ---------------------------------------------------------------------------------------------------------


def test_folder_reads_real_images(photos):
    dataset = open_dataset(photos.root)
    check_images(dataset, photos)
    assert len(dataset) == 5 and len(dataset.skipped) == 2
    assert all(item.path == photos.root / item.source for item in dataset)
    reasons = {s.source: s.reason for s in dataset.skipped}
    assert "not an image file" in reasons["notes.png"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "skipped 2: notes.png" in dataset.summary()


def test_exif_orientation_is_applied(photos):
    item = next(i for i in open_dataset(photos.root) if i.source == photos.rotated)
    with Image.open(photos.root / photos.rotated) as stored:
        assert stored.size == (48, 24)
    assert item.image.size == (24, 48)  # turned upright: the stored size transposed
    assert close(item.image.getpixel((12, 6)), RED) and close(item.image.getpixel((12, 42)), BLUE)


def test_folder_order_is_stable_and_files_are_deterministic(photos, tmp_path):
    again = write_image_folder(tmp_path / "again")
    first, second = open_dataset(photos.root), open_dataset(again.root)
    assert [i.key for i in first] == [i.key for i in second]
    assert [i.source for i in first] == sorted(i.source for i in first)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"caption_extension": ".caption"}, {"rotated.jpg": "a rotated photo"}),
        ({"caption_extension": ".txt"}, {"red.png": "a red square", "gray.png": "a gray square"}),
        ({"caption_extension": "none"}, {}),
    ],
)
def test_caption_extension(photos, options, expected):
    captions = {i.source: i.caption for i in open_dataset(photos.root, options=options) if "/" not in i.source}
    assert captions == {name: expected.get(name) for name in captions}


def test_not_recursive_reads_only_the_top_folder(photos):
    dataset = open_dataset(photos.root, options={"recursive": "false"})
    assert [i.source for i in dataset] == [n for n in photos.good if "/" not in n]


def test_masks_pair_with_their_images_and_are_not_training_images(tmp_path):
    folder = write_image_folder(tmp_path / "photos", masks=True)
    Image.new("L", (8, 8), 255).save(folder.root / "ghost_mask.png")  # a mask with no image
    dataset = open_dataset(folder.root)
    assert [i.source for i in dataset] == folder.good
    masks = {i.source: i.mask for i in dataset if i.mask is not None}
    assert set(masks) == set(folder.masks) == {"red.png", "gray.png"}
    assert all(m.mode == "L" for m in masks.values())
    assert masks["red.png"].size == (32, 24)
    assert masks["red.png"].getpixel((2, 2)) == 255 and masks["red.png"].getpixel((30, 2)) == 0
    assert {s.source for s in dataset.skipped} == {*folder.bad, "ghost_mask.png"}


def test_a_mask_of_the_wrong_size_skips_its_image(tmp_path):
    folder = write_image_folder(tmp_path / "photos")
    Image.new("L", (5, 5), 255).save(folder.root / "red_mask.png")
    dataset = open_dataset(folder.root)
    reasons = {s.source: s.reason for s in dataset.skipped}
    assert "red_mask.png is 5x5, the image is 32x24" in reasons["red.png"]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_metadata_file_gives_captions_and_reports_missing_images(photos, kind):
    rows = [
        {"file_name": "red.png", "text": "metadata wins over the sidecar"},
        {"file_name": "rgba.png", "text": "a green half"},
        {"file_name": "lost.png", "text": "not there"},
        {"file_name": "5_aawxbc figurine/blue.png", "text": ""},  # empty: the sidecar is used
    ]
    if kind == "csv":
        lines = ["file_name,text"] + [f'"{r["file_name"]}","{r["text"]}"' for r in rows]
        (photos.root / "metadata.csv").write_text("\n".join(lines) + "\n")
    else:
        (photos.root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dataset = open_dataset(photos.root)
    captions = {i.source: i.caption for i in dataset}
    assert captions["red.png"] == "metadata wins over the sidecar"
    assert captions["rgba.png"] == "a green half"
    assert captions["5_aawxbc figurine/blue.png"] == "a blue figurine"
    assert captions["gray.png"] == "a gray square"  # not listed: its sidecar
    missing = [s for s in dataset.skipped if s.source == "lost.png"]
    assert len(missing) == 1 and f"metadata.{kind}" in missing[0].reason


def test_metadata_caption_column_and_relative_paths(tmp_path):
    folder = write_image_folder(tmp_path / "photos")
    rows = [{"file_name": "blue.png", "caption": "from the nested metadata"}]
    (folder.root / "5_aawxbc figurine" / "metadata.jsonl").write_text(json.dumps(rows[0]) + "\n")
    captions = {i.source: i.caption for i in open_dataset(folder.root)}
    assert captions["5_aawxbc figurine/blue.png"] == "from the nested metadata"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("metadata.csv", "image,text\nred.png,x\n", "metadata.csv has no file_name column (its columns: image, text)"),
        ("metadata.jsonl", '{"file_name": "red.png"}\n{oops\n', "metadata.jsonl line 2 is not JSON"),
    ],
)
def test_malformed_metadata_is_an_error(photos, name, text, message):
    (photos.root / name).write_text(text)
    with pytest.raises(DatasetError, match=re.escape(message)):
        open_dataset(photos.root)


def test_empty_or_all_broken_folders_are_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="has no usable image$"):
        open_dataset(tmp_path / "empty")
    assert len(open_dataset(tmp_path / "empty", allow_empty=True)) == 0
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_text("not a png")
    (broken / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut")
    with pytest.raises(DatasetError, match=r"no usable image; skipped 2: a\.png \(.*\); b\.jpg"):
        open_dataset(broken)


def test_a_huge_image_is_skipped_not_raised(photos, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # every image is now a "decompression bomb"
    dataset = open_dataset(photos.root, allow_empty=True)
    assert len(dataset) == 0 and len(dataset.skipped) == len(photos.images)
    assert "DecompressionBomb" in {s.source: s.reason for s in dataset.skipped}["red.png"]


def test_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match="is not a folder"):
        open_dataset(tmp_path / "a.txt", source="folder")


# --- zip ------------------------------------------------------------------------------------------------------------


def test_zip_with_a_wrapper_folder_and_macos_litter(photos, tmp_path):
    litter = {"__MACOSX/photos/._red.png": b"\x00\x05\x16\x07junk", "photos/.hidden.png": b"junk"}
    archive = zip_folder(photos.root, tmp_path / "photos.zip", prefix="photos", extra=litter)
    dataset = open_dataset(archive)
    check_images(dataset, photos, prefix="photos/")
    assert all(item.path is None for item in dataset)


def test_zip_with_images_at_the_root_and_a_metadata_file(photos, tmp_path):
    (photos.root / "metadata.csv").write_text("file_name,text\nrgba.png,a green half\nlost.png,gone\n")
    dataset = open_dataset(zip_folder(photos.root, tmp_path / "photos.zip"))
    assert {i.source: i.caption for i in dataset}["rgba.png"] == "a green half"
    assert {s.source for s in dataset.skipped} == {*photos.bad, "lost.png"}


@pytest.mark.parametrize("member", ["../evil.png", "photos/../../evil.png", "/etc/evil.png", "C:/evil.png"])
def test_zip_with_an_unsafe_member_is_refused_before_reading(photos, tmp_path, monkeypatch, member):
    archive = zip_folder(photos.root, tmp_path / "photos.zip", extra={member: b"x"})

    def no_reading(*args, **kwargs):
        raise AssertionError("a member was read")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_reading)
    with pytest.raises(DatasetError, match="unsafe member") as error:
        get_dataset_source("zip").open(str(archive), {})  # raises at once, not when iterated
    assert repr(member) in str(error.value)


def test_bad_zip_files(tmp_path):
    (tmp_path / "fake.zip").write_text("not a zip")
    with pytest.raises(DatasetError, match="cannot be read as a zip file"):
        open_dataset(tmp_path / "fake.zip")
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "missing.zip", source="zip")
    with pytest.raises(DatasetError, match="has no usable image"):
        open_dataset(zip_folder(tmp_path / "fake.zip", tmp_path / "empty.zip", extra={"a/": b""}))


# --- Hugging Face datasets ------------------------------------------------------------------------------------------


def check_rows(dataset, folder, split="train"):
    """Rows follow ``folder.images``; the bad ones are skipped by row."""
    rows = folder.images
    assert [i.source for i in dataset] == [f"{split}[{rows.index(n)}]" for n in folder.good]
    assert [s.source for s in dataset.skipped] == [f"{split}[{rows.index(n)}]" for n in folder.bad]
    for item, name in zip(dataset, folder.good):
        assert item.caption == folder.captions[name]
        assert item.image.mode == "RGB" and item.image.size == folder.sizes[name]
        assert item.key == image_key((folder.root / name).read_bytes())


def test_hf_saved_dataset(photos, tmp_path):
    saved = save_hf_dataset(photos, tmp_path / "saved")
    check_rows(open_dataset(saved), photos)
    check_rows(open_dataset(f"hf:{saved}"), photos)


def test_hf_saved_dataset_dict_and_its_splits(photos, tmp_path):
    saved = save_hf_dataset(photos, tmp_path / "saved", splits=("train", "test"))
    check_rows(open_dataset(saved, options={"split": "test"}), photos, split="test")
    with pytest.raises(DatasetError, match="has no split 'valid'; its splits: train, test"):
        open_dataset(saved, options={"split": "valid"})


def test_hf_columns(photos, tmp_path):
    dataset = hf_dataset(photos, caption_column="caption").rename_column("image", "picture")
    dataset.save_to_disk(str(tmp_path / "saved"))
    items = open_dataset(tmp_path / "saved")  # the first Image column, and 'caption' when there is no 'text'
    assert [i.caption for i in items] == [photos.captions[n] for n in photos.good]
    uncaptioned = open_dataset(tmp_path / "saved", options={"caption_column": "none", "image_column": "picture"})
    assert len(uncaptioned) == 5 and all(i.caption is None for i in uncaptioned)
    for options, message in [
        ({"image_column": "image"}, "no image column 'image'; its columns: picture, caption"),
        ({"caption_column": "text"}, "no caption column 'text'; its columns: picture, caption"),
    ]:
        with pytest.raises(DatasetError, match=message):
            open_dataset(tmp_path / "saved", options=options)


def test_hf_hub_dataset_from_the_cache(photos, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # never reach out, whatever the environment
    cache = tmp_path / "datasets-cache"
    seed_hf_dataset_cache(cache, "owner/photos", hf_dataset(photos))
    check_rows(open_dataset("hf:owner/photos", options={"cache_dir": str(cache)}), photos)
    with pytest.raises(DatasetError, match=r"'owner/other' is not in the datasets cache .* \(offline\)$"):
        open_dataset("hf:owner/other", options={"cache_dir": str(cache)})


def test_hf_local_imagefolder_and_parquet(photos, tmp_path):
    rows = [{"file_name": name, "text": f"metadata: {name}"} for name in photos.images]
    (photos.root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    cache = str(tmp_path / "datasets-cache")
    dataset = open_dataset(f"hf:imagefolder:{photos.root}", options={"cache_dir": cache})
    assert len(dataset) == 5 and len(dataset.skipped) == 2
    # imagefolder reads the metadata file (not sidecars) and keeps the files' paths
    assert {(i.path, i.caption) for i in dataset} == {(photos.root / n, f"metadata: {n}") for n in photos.good}
    hf_dataset(photos).to_parquet(str(tmp_path / "photos.parquet"))
    check_rows(open_dataset(f"hf:{tmp_path / 'photos.parquet'}", options={"cache_dir": cache}), photos)
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(f"hf:imagefolder:{tmp_path / 'nowhere'}")


def test_hf_without_the_datasets_library(photos, tmp_path, monkeypatch):
    saved = save_hf_dataset(photos, tmp_path / "saved")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets → ImportError
    with pytest.raises(DatasetError, match=r'pip install "lorastack\[datasets\]"'):
        open_dataset(saved)


# --- the sources as plain objects -----------------------------------------------------------------------------------


def test_sources_yield_items_and_skips_without_open_dataset(photos):
    entries = list(get_dataset_source("folder").open(str(photos.root), {"caption_extension": "auto"}))
    assert all(isinstance(e, DatasetItem | Skipped) for e in entries)
    assert len(entries) == len(photos.images)
    buffer = io.BytesIO()
    entries[0].image.save(buffer, "PNG")  # a fully decoded image, usable after the source is done
