"""Hostile dataset folders: FIFOs, devices, symlink loops and unreadable files, odd metadata (JSON Lines and CSV)
and sidecar captions, file names that are not UTF-8, an empty ``hf:`` location, and the property that any
generated folder or zip gives a ``Dataset`` or a one-line ``DatasetError``, quickly.

Nothing crashes, hangs or exhausts memory.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from dataset_helpers import BLUE, RED, MiB, encode, gray16, png
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lorastack.core.data import Dataset, DatasetError, open_dataset


@pytest.fixture(autouse=True)
def _fresh_plugins(plugin_manager):
    return plugin_manager


@contextmanager
def within(seconds: float):
    """Fail (instead of hanging) when the block takes longer than ``seconds``."""

    def expired(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- special files and odd metadata in folders ---------------------------------------------------------------

SPECIAL_FILES = r"""
import json, os, sys
from lorastack.core.data import DatasetError, ImageError, open_dataset, open_image
out = {}
for folder in sys.argv[1:]:
    try:
        d = open_dataset(folder)
        out[os.path.basename(folder)] = {"items": {i.source: i.caption for i in d},
                                         "skipped": {s.source: s.reason for s in d.skipped}}
    except DatasetError as e:
        out[os.path.basename(folder)] = {"error": str(e)}
try:
    open_image(os.path.join(sys.argv[1], "fifo.png"))
except ImageError as e:
    out["open_image"] = str(e)
print(json.dumps(out))
"""


def test_fifos_devices_and_symlink_loops_are_skipped_not_read(tmp_path):
    """Reading a FIFO blocks forever and /dev/zero never ends: both run in a child process with a timeout and a
    memory limit, so a regression fails this test instead of the machine."""
    special = tmp_path / "special"
    special.mkdir()
    (special / "good.png").write_bytes(png(RED))
    os.mkfifo(special / "fifo.png")
    (special / "zero.png").symlink_to("/dev/zero")
    (special / "loop.png").symlink_to(special / "loop.png")
    (special / "dangling.png").symlink_to(special / "missing.png")
    (special / "dir.png").mkdir()
    (special / "captioned.png").write_bytes(png(BLUE))
    os.mkfifo(special / "captioned.txt")
    big = special / "sparse.png"
    with big.open("wb") as f:
        f.truncate(300 * MiB)  # sparse: no disk space
    (special / "long.png").write_bytes(png(BLUE))
    with (special / "long.txt").open("wb") as f:
        f.truncate(MiB)
    meta = tmp_path / "fifo-metadata"
    meta.mkdir()
    (meta / "a.png").write_bytes(png(RED))
    os.mkfifo(meta / "metadata.csv")

    def limit_memory():
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))

    result = subprocess.run(
        [sys.executable, "-c", SPECIAL_FILES, str(special), str(meta)], capture_output=True, text=True, timeout=30,
        preexec_fn=limit_memory,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    got = out["special"]
    assert got["items"] == {"good.png": None}
    skipped = got["skipped"]
    assert set(skipped) == {"fifo.png", "zero.png", "loop.png", "dangling.png", "captioned.png", "sparse.png",
                            "long.png"}  # fmt: skip
    assert "not a regular file (a FIFO)" in skipped["fifo.png"]
    assert "not a regular file (a character device)" in skipped["zero.png"]
    assert "caption" in skipped["captioned.png"] and "FIFO" in skipped["captioned.png"]
    assert f"{300 * MiB:,} bytes" in skipped["sparse.png"] and "256 MiB" in skipped["sparse.png"]
    assert "caption" in skipped["long.png"] and "64 KiB" in skipped["long.png"]
    assert "metadata.csv" in out["fifo-metadata"]["error"] and "FIFO" in out["fifo-metadata"]["error"]
    assert "FIFO" in out["open_image"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_skipped(tmp_path):
    (tmp_path / "good.png").write_bytes(png())
    locked = tmp_path / "locked.png"
    locked.write_bytes(png(BLUE))
    locked.chmod(0)
    dataset = open_dataset(tmp_path)
    assert [s.source for s in dataset.skipped] == ["locked.png"]


def metadata_folder(root: Path, name: str, text: str | bytes) -> Path:
    root.mkdir()
    for image in ("a.png", "b.png", "c.png", "d.png"):
        (root / image).write_bytes(png())
    (root / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return root


def jsonl(*rows) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"


@pytest.mark.parametrize(
    "text, captions, skipped",
    [
        # a list of captions (COCO style): the first text in it
        (jsonl({"file_name": "a.png", "text": ["first", "second"]}), {"a.png": "first"}, {}),
        (jsonl({"file_name": "a.png", "text": 42}, {"file_name": "b.png", "caption": 1.5}),
         {"a.png": "42", "b.png": "1.5"}, {}),
        (jsonl({"file_name": "a.png", "text": {"en": "x"}}, {"file_name": "b.png", "text": True},
               {"file_name": "c.png", "text": [1, 2]}),
         {}, {"a.png": "is a dict, not text", "b.png": "is a bool, not text", "c.png": "is a list, not text"}),
        ("\ufeff" + jsonl({"file_name": "a.png", "text": "bom"}), {"a.png": "bom"}, {}),
        # a JSON string may hold U+2028; it is no line break in JSON Lines
        (jsonl({"file_name": "a.png", "text": "one\u2028two"}).replace("\\u2028", "\u2028"),
         {"a.png": "one\u2028two"}, {}),
        (jsonl({"file_name": "a.png", "text": "x" * 100_000}), {}, {"a.png": "over the 64 KiB limit"}),
    ],
)  # fmt: skip
def test_metadata_caption_types(tmp_path, text, captions, skipped):
    dataset = open_dataset(metadata_folder(tmp_path / "m", "metadata.jsonl", text))
    got = {i.source: i.caption for i in dataset if i.caption is not None}
    assert got == captions
    reasons = {s.source: s.reason for s in dataset.skipped}
    assert set(reasons) == set(skipped)
    for name, part in skipped.items():
        assert part in reasons[name] and "metadata.jsonl" in reasons[name], reasons[name]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("metadata.jsonl", jsonl({"file_name": 5, "text": "x"}), "row 1 file_name is a number, not a file name"),
        ("metadata.jsonl", "[" * 100_000 + "\n", "line 1 is not JSON"),
        ("metadata.jsonl", '{"file_name": "a.png", "n": ' + "1" * 5000 + "}\n", "line 1 is not JSON"),
        ("metadata.csv", b"file_name,text\na.png,\xff\xfe\n", "cannot be read as UTF-8 text"),
    ],
)
def test_malformed_metadata_is_a_one_line_error(tmp_path, name, text, message):
    with pytest.raises(DatasetError) as raised:
        open_dataset(metadata_folder(tmp_path / "m", name, text))
    assert message in str(raised.value) and "\n" not in str(raised.value) and len(str(raised.value)) < 500


@pytest.mark.parametrize(
    "text, captions, skipped",
    [
        # over csv's own 128 KiB field limit: judged by the caption limit, as in JSON lines
        ("file_name,text\na.png," + "x" * 200_000 + "\nb.png,fine\n", {"b.png": "fine"},
         {"a.png": "over the 64 KiB limit"}),
        # a lone carriage return ends a row (old Mac line ends), it does not stop the reader
        ("file_name,text\na.png,one\rtwo\n", {"a.png": "one"}, {"two": "not in the dataset"}),
        ("file_name,text,text\na.png,x,y,z\nb.png\n", {"a.png": "y"}, {}),
        ("file_name,text\na.png,\"x\0y\"\n", {"a.png": "x\0y"}, {}),
    ],
)  # fmt: skip
def test_odd_metadata_csv(tmp_path, text, captions, skipped):
    dataset = open_dataset(metadata_folder(tmp_path / "m", "metadata.csv", text))
    assert {i.source: i.caption for i in dataset if i.caption is not None} == captions
    reasons = {s.source: s.reason for s in dataset.skipped}
    assert set(reasons) == set(skipped)
    for name, part in skipped.items():
        assert part in reasons[name], reasons[name]


def test_a_hundred_megabyte_metadata_line_is_handled(tmp_path):
    root = metadata_folder(tmp_path / "m", "metadata.jsonl", "")
    with (root / "metadata.jsonl").open("w") as f:
        f.write(jsonl({"file_name": "b.png", "text": "fine"}))
        f.write('{"file_name": "a.png", "text": "')
        for _ in range(100):
            f.write("y" * MiB)
        f.write('"}\n')
    dataset = open_dataset(root)
    assert {i.source: i.caption for i in dataset} == {"b.png": "fine", "c.png": None, "d.png": None}
    (skipped,) = dataset.skipped
    assert skipped.source == "a.png" and "over the 64 KiB limit" in skipped.reason


def test_binary_sidecar_captions_skip_their_image(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "a.txt").write_bytes(b"\xff\xfe\x00binary")
    (tmp_path / "b.png").write_bytes(png())
    dataset = open_dataset(tmp_path)
    assert [i.source for i in dataset] == ["b.png"]
    assert "caption file cannot be read as UTF-8 text" in dataset.skipped[0].reason


# --- the property: any folder or zip gives a Dataset or a one-line DatasetError, quickly ---------------------------

GOOD = png(RED, (8, 8))
PARTS = ["a", "b", "masks", "5_tok cls", "__MACOSX", ".hid", "sub", "a_mask", "x y"]
SUFFIXES = [".png", ".jpg", ".gif", ".tif", ".txt", ".caption", ""]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_subnormal=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
names = st.builds(
    lambda parts, stem, suffix: "/".join([*parts, stem + suffix]),
    st.lists(st.sampled_from(PARTS), max_size=2),
    st.sampled_from(["a", "b", "c", "a_mask", "metadata", ".x", "e\u00e9"]),
    st.sampled_from(SUFFIXES),
)
metadata_rows = st.lists(
    st.fixed_dictionaries(
        {"file_name": st.one_of(st.sampled_from(["a.png", "b.png", "sub/a.png", "../a.png", ""]), json_values)},
        optional={"text": json_values, "caption": json_values},
    ),
    max_size=4,
)
# written as a FIFO, a symlink to itself, a folder in a folder dataset (as these bytes in a zip)
FIFO, LOOP, FOLDER = b"<fifo>", b"<loop>", b"<folder>"
contents = st.one_of(
    st.sampled_from([FIFO, LOOP, FOLDER]),
    st.just(GOOD),
    st.just(GOOD[: len(GOOD) // 2]),
    st.binary(max_size=40),
    st.text(max_size=20).map(str.encode),
    st.just(encode(gray16("I;16B"), "TIFF")),
)
files = st.dictionaries(names, contents, max_size=8)
metadata = st.one_of(
    st.none(),
    metadata_rows.map(lambda rows: ("metadata.jsonl", "\n".join(json.dumps(r) for r in rows).encode())),
    metadata_rows.map(lambda rows: ("metadata.csv", ("file_name,text\n" + "\n".join(
        f"{json.dumps(r.get('file_name'))},{json.dumps(r.get('text'))}" for r in rows)).encode())),
    st.tuples(st.sampled_from(["metadata.jsonl", "metadata.csv"]), st.binary(max_size=30)),
)  # fmt: skip
zip_methods = st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
options = st.fixed_dictionaries(
    {},
    optional={
        "caption_extension": st.sampled_from(["auto", ".txt", ".caption", "none"]),
        "mask_suffix": st.sampled_from(["", "_mask", "a", "/"]),
    },
)
mutations = st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=3)


def write_dataset(root: Path, entries: dict[str, bytes], kind: str, method: int, flips) -> Path:
    if kind == "folder":
        root.mkdir()
        for name, data in entries.items():
            target = root / name
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                if data == FIFO:
                    os.mkfifo(target)
                elif data == LOOP:
                    target.symlink_to(target)
                elif data == FOLDER:
                    target.mkdir()
                else:
                    target.write_bytes(data)
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                pass  # a name that is also a folder of another name
        return root
    path = root.with_suffix(".zip")
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data, method)
    if flips:
        data = bytearray(path.read_bytes())
        for at, value in flips:
            data[at % len(data)] = value
        path.write_bytes(bytes(data))
    return path


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(files, metadata, st.sampled_from(["folder", "zip"]), zip_methods, mutations, options, st.booleans())
def test_any_folder_or_zip_gives_a_dataset_or_a_one_line_error(entries, meta, kind, method, flips, opts, empty):
    entries = dict(entries)
    if meta is not None:
        entries[meta[0]] = meta[1]
    with tempfile.TemporaryDirectory() as tmp:
        location = write_dataset(Path(tmp) / "data", entries, kind, method, flips if kind == "zip" else [])
        started = time.monotonic()
        try:
            with within(20):
                dataset = open_dataset(location, options=opts, allow_empty=empty)
        except DatasetError as e:
            assert "\n" not in str(e) and len(str(e)) < 3000, str(e)
            return
        finally:
            assert time.monotonic() - started < 10
        assert isinstance(dataset, Dataset)
        for item in dataset:
            assert item.image.mode == "RGB" and min(item.image.size) > 0
            assert item.caption is None or isinstance(item.caption, str)
        for skipped in dataset.skipped:
            assert isinstance(skipped.source, str) and isinstance(skipped.reason, str)
        assert "\n" not in dataset.summary()


def test_the_dataset_command_prints_any_file_name_on_one_line(tmp_path):
    """A file name is any bytes: one that is not UTF-8 must not stop the listing on a UTF-8 terminal."""
    import contextlib

    from lorastack.cli.main import main

    (tmp_path / "a.png").write_bytes(png())
    (Path(os.fsdecode(bytes(tmp_path) + b"/b\xff.png"))).write_bytes(png(BLUE))
    (tmp_path / "c\nd.png").write_bytes(b"broken")
    out, err = io.BytesIO(), io.BytesIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8", errors="strict", write_through=True)
    stderr = io.TextIOWrapper(err, encoding="utf-8", errors="strict", write_through=True)
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as code:
        main(["dataset", str(tmp_path)])
        raise SystemExit(0)
    assert code.value.code == 0, err.getvalue()
    lines = out.getvalue().decode().splitlines()
    assert lines[:2] == ["a.png  16x16  (no caption)", "b\\udcff.png  16x16  (no caption)"]
    assert "skipped 1: c\\nd.png" in lines[-1] and len(lines) == 3


def test_an_empty_hf_location_names_no_dataset(tmp_path, monkeypatch):
    from lorastack.core.data import DatasetError, open_dataset

    monkeypatch.chdir(tmp_path)  # "hf:" alone used to read the current folder
    with pytest.raises(DatasetError, match="names no dataset"):
        open_dataset("hf:")


def test_a_file_name_that_is_not_utf8_gives_a_caption_a_tokenizer_takes(tmp_path):
    from lorastack.core.data import open_dataset
    from lorastack.plugins.captioners import FilenameCaptioner

    folder = tmp_path / "data"
    folder.mkdir()
    name = os.fsdecode(b"red_\xffcircle.png")
    Image.new("RGB", (8, 8), "red").save(folder / name)
    dataset = open_dataset(folder)
    (caption,) = FilenameCaptioner().caption(dataset.items, {})
    caption.encode("utf-8")  # no surrogates left
    assert "red" in caption and "circle" in caption
