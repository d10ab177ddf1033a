"""The built-in captioners (filename, sidecar, blip on a tiny BLIP), caption_dataset and ``lorastack caption``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from cli_helpers import run_cli
from PIL import Image

from lorastack.core.captioning import CaptionError, caption_dataset
from lorastack.core.data import open_dataset
from lorastack.core.interfaces import DatasetItem, PluginOptionError
from lorastack.plugins import hookimpl
from lorastack.plugins.captioners import words_from_name
from lorastack.plugins.manager import UnknownNameError, get_captioner
from lorastack.testing.images import write_image_folder, zip_folder

PREFIX = "a photo of aawxbc"


def _item(name: str, caption: str | None = None, *, colour=(200, 30, 30), path: Path | None = None) -> DatasetItem:
    return DatasetItem(Image.new("RGB", (24, 24), colour), caption, name, path=path)


def _noise_items(count: int) -> list[DatasetItem]:
    import numpy as np

    rng = np.random.default_rng(0)
    return [
        DatasetItem(Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)), None, f"noise{i}.png")
        for i in range(count)
    ]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- filename ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("red_circle-02.png", "red circle"),
        ("red_circle.png", "red circle"),
        ("sub/my-dog_3.jpeg", "my dog"),
        ("cat (2).png", "cat"),
        ("IMG_20240101_123456.jpg", "IMG"),
        ("r2d2.png", "r2d2"),
        ("0001.png", None),
        ("--_.png", None),
    ],
)
def test_words_from_name(name, words):
    assert words_from_name(name) == words


def test_filename_captioner(tmp_path):
    captioner = get_captioner("filename")
    items = [
        _item("x", path=tmp_path / "Red_Circle-02.png"),
        _item("archive/blue_sky_01.webp"),  # a zip member: no path, the member name
        _item("train[3]"),  # a dataset row: no file name at all
        _item("y", path=tmp_path / "0003.png"),
    ]
    assert list(captioner.caption(items, {})) == ["Red Circle", "blue sky", None, None]
    with_prefix = list(captioner.caption(items, {"prefix": PREFIX, "lowercase": "yes"}))
    assert with_prefix == [f"{PREFIX} red circle", f"{PREFIX} blue sky", PREFIX, PREFIX]


# --- sidecar -------------------------------------------------------------------------------------------------------


def test_sidecar_keeps_existing_and_fills_gaps(tmp_path):
    captioner = get_captioner("sidecar")
    items = [
        _item("a", "  an existing caption ", path=tmp_path / "red_circle-01.png"),
        _item("b", None, path=tmp_path / "green_square.png"),
        _item("c", "", path=tmp_path / "blue_star_7.png"),
    ]
    assert list(captioner.caption(items, {})) == ["an existing caption", "green square", "blue star"]
    filled = list(captioner.caption(items, {"fill": "filename", "prefix": PREFIX, "fill_options": "lowercase=true"}))
    assert filled == ["an existing caption", f"{PREFIX} green square", f"{PREFIX} blue star"]
    assert list(captioner.caption(items, {"fill": "none"})) == ["an existing caption", None, None]


def test_sidecar_checks_its_fill_captioner_before_captioning(tmp_path):
    captioner = get_captioner("sidecar")
    items = [_item("b", None, path=tmp_path / "b.png")]
    with pytest.raises(PluginOptionError, match=r"unknown captioner 'blipp'; available: blip, filename, sidecar"):
        captioner.caption(items, {"fill": "blipp"})
    with pytest.raises(PluginOptionError, match=r"captioner 'filename' has no option 'colour'"):
        captioner.caption(items, {"fill_options": "colour=red"})
    with pytest.raises(PluginOptionError, match=r"--batch-size '0' must be ≥ 1"):
        captioner.caption(items, {"fill": "blip", "fill_options": "batch_size=0"})


# --- blip ----------------------------------------------------------------------------------------------------------


def test_blip_one_caption_per_image_batched_like_single(tiny_blip_dir):
    captioner = get_captioner("blip")
    items = [*_noise_items(5), _item("red.png"), _item("blue.png", colour=(20, 30, 220))]
    options = {"model": str(tiny_blip_dir), "max_new_tokens": 6, "device": "cpu"}
    batched = list(captioner.caption(items, {**options, "batch_size": 3}))
    single = list(captioner.caption(items, {**options, "batch_size": 1}))
    assert len(batched) == len(items) and all(isinstance(c, str) and c for c in batched)
    assert batched == single
    # random weights, but captions follow the image: a batching bug that mixes images up would show
    assert len(set(batched)) > 1


def test_blip_prefix_starts_every_caption(tiny_blip_dir):
    captioner = get_captioner("blip")
    items = _noise_items(3)
    prefix = "A Photo of aawxbc,"  # upper case and an unknown word: the tokenizer would change both
    captions = list(
        captioner.caption(items, {"model": str(tiny_blip_dir), "prefix": prefix, "max_new_tokens": 4, "batch_size": 2})
    )
    assert len(captions) == 3
    assert all(c.startswith(prefix) for c in captions) and any(len(c) > len(prefix) for c in captions)


def test_blip_model_errors_are_one_line_and_name_the_checkpoint(tmp_path):
    captioner = get_captioner("blip")
    items = [_item("red.png")]
    missing = tmp_path / "no-such-blip"
    with pytest.raises(CaptionError, match=rf"BLIP checkpoint '{missing}': no such folder"):
        list(captioner.caption(items, {"model": str(missing)}))
    with pytest.raises(CaptionError) as error:  # a Hub id while offline (tests never reach the network)
        list(captioner.caption(items, {"model": "nobody-here/blip-missing"}))
    assert "'nobody-here/blip-missing'" in str(error.value) and "\n" not in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptionError, match=r"cannot load the BLIP captioning model .*empty"):
        list(captioner.caption(items, {"model": str(tmp_path / "empty")}))


def test_blip_bad_device_fails_before_the_model_loads(monkeypatch, tiny_blip_dir):
    import lorastack.plugins.captioners as captioners

    monkeypatch.setattr(captioners, "_load_blip", lambda *a: pytest.fail("the model must not load"))
    with pytest.raises(PluginOptionError, match=r"--device 'gpu' is not a device"):
        get_captioner("blip").caption([_item("red.png")], {"model": str(tiny_blip_dir), "device": "gpu"})


# --- caption_dataset -----------------------------------------------------------------------------------------------


class _Recorder:
    """A captioner plugin that records what it was given."""

    def __init__(self):
        self.seen: list[str] = []
        self.outputs: list = []

    @hookimpl
    def register_captioners(self, register):
        recorder = self

        class Recording:
            name = "recording"
            description = "Records its items."
            options = ()

            def caption(self, items, options):
                recorder.seen += [item.source for item in items]
                yield from (recorder.outputs or [f"new {item.source}" for item in items])

        register(Recording())


def test_caption_dataset_only_captions_gaps_and_reports(plugin_manager, tmp_path):
    recorder = _Recorder()
    plugin_manager.register(recorder, "recorder")
    folder = write_image_folder(tmp_path / "photos")
    before = _snapshot(folder.root)
    report = caption_dataset(open_dataset(folder.root), "recording", {}, progress=False)
    assert recorder.seen == ["rgba.png"]  # the captioned images are not even passed
    assert (report.written, report.kept, report.skipped, report.unreadable) == (1, 4, 0, 2)
    assert report.outputs == [folder.root / "rgba.txt"]
    assert (folder.root / "rgba.txt").read_text() == "new rgba.png\n"
    after = _snapshot(folder.root)
    assert {k: v for k, v in after.items() if k != "rgba.txt"} == before  # nothing else touched, no temp files

    recorder.seen.clear()
    report = caption_dataset(open_dataset(folder.root), "recording", {}, overwrite=True, progress=False)
    assert sorted(recorder.seen) == folder.good
    assert (report.written, report.kept) == (4, 1)  # rgba.png already had this very caption
    assert (folder.root / "rotated.caption").read_text() == "new rotated.jpg\n"  # its own sidecar, not a new .txt
    assert not (folder.root / "rotated.txt").exists()
    assert {i.source: i.caption for i in open_dataset(folder.root)} == {n: f"new {n}" for n in folder.good}


def test_caption_dataset_rejects_a_captioner_that_miscounts(plugin_manager, tmp_path):
    recorder = _Recorder()
    plugin_manager.register(recorder, "recorder")
    items = [_item("a.png", path=tmp_path / "a.png"), _item("b.png", path=tmp_path / "b.png")]
    recorder.outputs = ["only one"]
    with pytest.raises(CaptionError, match=r"'recording' gave 1 captions for 2 images"):
        caption_dataset(items, "recording", progress=False)
    assert (tmp_path / "a.txt").read_text() == "only one\n"  # what arrived before the error is kept
    recorder.outputs = ["one", "two", "three"]
    with pytest.raises(CaptionError, match=r"more captions than the 2 images"):
        caption_dataset(items, "recording", overwrite=True, progress=False)
    recorder.outputs = ["first"]  # a metadata file too
    with pytest.raises(CaptionError, match=r"gave 1 captions for 2 images"):
        caption_dataset(items, "recording", output="csv", overwrite=True, progress=False)
    # the new caption, and b's existing one (written by the run above) copied in
    assert (tmp_path / "metadata.csv").read_text() == "file_name,text\na.png,first\nb.png,two\n"


def test_items_without_files_need_an_output_file(tmp_path):
    folder = write_image_folder(tmp_path / "photos")
    archive = zip_folder(folder.root, tmp_path / "photos.zip")
    dataset = open_dataset(archive)
    with pytest.raises(CaptionError, match=r"no file on disk .* --layout csv or jsonl and --output FILE"):
        caption_dataset(dataset, "filename", progress=False)
    with pytest.raises(CaptionError, match=r"name the csv file to write with --output FILE"):
        caption_dataset(dataset, "filename", output="csv", progress=False)
    out = tmp_path / "captions.jsonl"
    report = caption_dataset(dataset, "filename", output="jsonl", output_file=out, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert report.written == 1 and {r["file_name"]: r["text"] for r in rows} == {**folder.captions, "rgba.png": "rgba"}


# --- lorastack caption ---------------------------------------------------------------------------------------------


def test_cli_writes_sidecars_and_keeps_existing_captions(tmp_path):
    folder = write_image_folder(tmp_path / "photos")
    code, out, err = run_cli("caption", folder.root, "--captioner", "filename", "--prefix", PREFIX)
    assert code == 0, err
    assert "wrote 1 caption" in out and "kept 4 existing" in out and "2 unreadable" in out
    assert (folder.root / "rgba.txt").read_text().strip() == f"{PREFIX} rgba"
    assert (folder.root / "red.txt").read_text() == "a red square\n"  # untouched, byte for byte
    expected = {**folder.captions, "rgba.png": f"{PREFIX} rgba"}
    assert {i.source: i.caption for i in open_dataset(folder.root)} == expected

    code, out, _ = run_cli("caption", folder.root, "--captioner", "filename", "--json")
    assert code == 0 and json.loads(out)["written"] == 0 and json.loads(out)["kept"] == 5

    code, out, err = run_cli("caption", folder.root, "--captioner", "filename", "--force")
    assert code == 0, err
    assert (folder.root / "red.txt").read_text().strip() == "red"
    assert (folder.root / "5_aawxbc figurine" / "blue.txt").read_text().strip() == "blue"


def test_cli_csv_is_read_back_by_the_folder_source(tmp_path):
    folder = write_image_folder(tmp_path / "photos")
    code, out, err = run_cli("caption", folder.root, "--captioner", "filename", "--layout", "csv")
    assert code == 0, err
    metadata = folder.root / "metadata.csv"
    assert str(metadata) in out
    with metadata.open(newline="") as f:
        rows = {row["file_name"]: row["text"] for row in csv.DictReader(f)}
    expected = {**folder.captions, "rgba.png": "rgba"}
    assert rows == expected  # the existing captions too, so the file describes the whole dataset
    assert {i.source: i.caption for i in open_dataset(folder.root)} == expected
    first = metadata.read_bytes()
    code, out, _ = run_cli("caption", folder.root, "--captioner", "filename", "--layout", "csv")
    assert code == 0 and "kept 5" in out and metadata.read_bytes() == first

    # with --force the new captions go into the file the source reads first
    code, _, err = run_cli("caption", folder.root, "--captioner", "filename", "--layout", "csv", "--force")
    assert code == 0, err
    assert {i.source: i.caption for i in open_dataset(folder.root)} == {n: words_from_name(n) for n in folder.good}


def test_cli_keeps_other_metadata_rows_and_columns(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for name in ("a_1.png", "b_2.png"):
        Image.new("RGB", (8, 8)).save(root / name)
    (root / "metadata.jsonl").write_text(
        '{"file_name": "a_1.png", "caption": "kept", "score": 3}\n{"file_name": "gone.png", "caption": "x"}\n'
    )
    code, _, err = run_cli("caption", root, "--captioner", "filename", "--layout", "jsonl")
    assert code == 0, err
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    assert rows == [
        {"file_name": "a_1.png", "caption": "kept", "score": 3},
        {"file_name": "gone.png", "caption": "x"},
        {"file_name": "b_2.png", "caption": "b"},
    ]
    code, _, err = run_cli("caption", root, "--captioner", "filename", "--layout", "csv")
    assert code == 1 and "already has metadata.jsonl" in err


def test_cli_blip_on_a_folder(tiny_blip_dir, tmp_path):
    folder = write_image_folder(tmp_path / "photos")
    code, out, err = run_cli(
        "caption", folder.root, "--captioner", "blip", "--prefix", PREFIX, "--force",
        "--option", f"model={tiny_blip_dir}", "--option", "max_new_tokens=3", "--option", "batch_size=2",
    )  # fmt: skip
    assert code == 0, err
    assert "blip: wrote 5 captions" in out
    captions = {i.source: i.caption for i in open_dataset(folder.root)}
    assert sorted(captions) == folder.good and all(c.startswith(PREFIX) for c in captions.values())


def test_cli_unknown_captioner_lists_the_available_ones(tmp_path):
    code, out, err = run_cli("caption", tmp_path, "--captioner", "blipp")
    assert code == 1 and not out
    assert "unknown captioner 'blipp'; available: blip, filename, sidecar" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--captioner", "blip", "--option", "batch_size=0"], "--batch-size '0' must be ≥ 1"),
        (["--captioner", "blip", "--option", "max_new_tokens=many"], "--max-new-tokens 'many' is not an integer"),
        (["--captioner", "blip", "--option", "dtype=float8"], "--dtype 'float8' is not one of: auto, float32"),
        (["--captioner", "blip", "--option", "device=gpu"], "--device 'gpu' is not a device"),
        (["--captioner", "filename", "--option", "colour=red"], "captioner 'filename' has no option 'colour'"),
        (["--captioner", "filename", "--option", "lowercase"], "option 'lowercase' is not KEY=VALUE"),
        (["--captioner", "sidecar", "--option", "fill=blipp"], "unknown captioner 'blipp'; available:"),
        (["--captioner", "sidecar", "--option", "fill=blip", "--option", "fill_options=batch_size=0"], "must be ≥ 1"),
    ],
)
def test_cli_bad_options_fail_before_anything_is_written(monkeypatch, tmp_path, args, message):
    import lorastack.plugins.captioners as captioners

    monkeypatch.setattr(captioners, "_load_blip", lambda *a: pytest.fail("the model must not load"))
    folder = write_image_folder(tmp_path / "photos")
    before = _snapshot(folder.root)
    code, out, err = run_cli("caption", folder.root, *args, "--force", "--layout", "csv")
    assert code == 1, out
    error = [line for line in err.splitlines() if not line.startswith("skipped ")]
    assert len(error) == 1 and message in error[0], err
    assert _snapshot(folder.root) == before


def test_cli_overwriting_metadata_captions_with_sidecars_is_refused(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.png")
    (root / "metadata.csv").write_text("file_name,text\na.png,from metadata\n")
    before = _snapshot(root)
    code, _, err = run_cli("caption", root, "--captioner", "filename", "--force")
    assert code == 1 and "get their caption from a metadata file" in err and "--layout csv" in err
    assert _snapshot(root) == before


def test_cli_zip_needs_an_output_file(tmp_path):
    folder = write_image_folder(tmp_path / "photos")
    archive = zip_folder(folder.root, tmp_path / "photos.zip")
    code, _, err = run_cli("caption", archive, "--captioner", "filename")
    assert code == 1 and "no file on disk" in err
    out = tmp_path / "captions.csv"
    code, _, err = run_cli("caption", archive, "--captioner", "filename", "--layout", "csv", "-o", out)
    assert code == 0, err
    with out.open(newline="") as f:
        assert {row["file_name"]: row["text"] for row in csv.DictReader(f)}["rgba.png"] == "rgba"
    code, _, err = run_cli("caption", archive, "--captioner", "filename", "-o", out)
    assert code == 2 and "--layout csv" in err


def test_unknown_captioner_from_the_api():
    with pytest.raises(UnknownNameError, match=r"available: blip, filename, sidecar"):
        caption_dataset([], "nope")
