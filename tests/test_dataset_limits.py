"""Hostile dataset inputs: odd image modes, zip bombs, lying headers, special files, odd metadata.

Every input ends as a usable item, a ``Skipped`` with a reason, or a one-line ``DatasetError``; nothing crashes,
hangs or exhausts memory.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lorastack.core.data import Dataset, DatasetError, ImageError, open_dataset, open_image, to_rgb
from lorastack.plugins import sources
from tests.cli_helpers import run_cli

RED, BLUE = (220, 30, 30), (30, 40, 220)
MiB = 2**20
#: 16-bit samples and what scaling them to 8 bits gives (round(v * 255 / 65535))
GRAY16 = [0, 257, 1000, 32768, 65535, 12345, 40000, 65280]
GRAY8 = [round(v * 255 / 65535) for v in GRAY16]


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


def encode(image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def png(colour=RED, size=(16, 16)) -> bytes:
    return encode(Image.new("RGB", size, colour), "PNG")


def noise_png(seed: int, size=(32, 32)) -> bytes:
    return encode(Image.frombytes("RGB", size, np.random.default_rng(seed).bytes(size[0] * size[1] * 3)), "PNG")


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes = b"") -> bytes:
    """A PNG written by hand: any declared size and bit depth (Pillow writes neither 16-bit RGB nor a 0x0 image)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def gray16(mode: str) -> Image.Image:
    """An 8x2 image of the ``GRAY16`` samples (both rows) in a 16-bit mode."""
    order = ">" if mode == "I;16B" else "<"
    return Image.frombytes(mode, (8, 2), struct.pack(f"{order}16H", *GRAY16, *GRAY16))


def odd_compression_tiff() -> bytes:
    data = encode(Image.new("RGB", (8, 8), RED), "TIFF")
    at = data.find(struct.pack("<HHI", 259, 3, 1))  # the Compression tag
    return data[: at + 8] + struct.pack("<H", 50000) + data[at + 10 :]


def odd_images() -> dict[str, bytes]:
    """Image files of every mode and shape a dataset may meet."""
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, BLUE, (0, 200, 0))]
    rgb16 = b"".join(b"\x00" + struct.pack(">24H", *[v for g in GRAY16 for v in (g, g, g)]) for _ in range(2))
    gray_png = b"".join(b"\x00" + struct.pack(">8H", *GRAY16) for _ in range(2))
    floats01 = np.array([GRAY8, GRAY8], dtype=np.float32) / 255
    ints = np.array([GRAY16, GRAY16], dtype=np.int32)
    return {
        "gray16be.tif": encode(gray16("I;16B"), "TIFF"),
        "gray16.tif": encode(gray16("I;16"), "TIFF"),
        "gray16le.tif": encode(gray16("I;16L"), "TIFF"),
        "gray16.png": raw_png(8, 2, 16, 0, gray_png),
        "rgb16.png": raw_png(8, 2, 16, 2, rgb16),
        "int32.tif": encode(Image.fromarray(ints, "I"), "TIFF"),
        "float01.tif": encode(Image.fromarray(floats01, "F"), "TIFF"),
        "float255.tif": encode(Image.fromarray(floats01 * 255, "F"), "TIFF"),
        "cmyk.jpg": encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"),
        "cmyk.tif": encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "TIFF"),
        "lab.tif": encode(Image.new("LAB", (8, 8), (50, 20, 20)), "TIFF"),
        "ycbcr.tif": encode(Image.new("YCbCr", (8, 8), (80, 90, 200)), "TIFF"),
        "bilevel.png": encode(Image.new("1", (8, 8), 1), "PNG"),
        "pa.tif": encode(Image.new("PA", (8, 8)), "TIFF"),
        "la.png": encode(Image.new("LA", (8, 8), (40, 255)), "PNG"),
        "anim.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "pages.tif": encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "one.png": png(RED, (1, 1)),
        # skipped: no pixels, a huge declared size, a compression no decoder knows
        "zero.png": raw_png(0, 0, 8, 2),
        "huge.png": raw_png(100_000, 100_000, 8, 2),
        "oddcomp.tif": odd_compression_tiff(),
    }


ODD_SKIPPED = {"zero.png", "huge.png", "oddcomp.tif"}
SIXTEEN_BIT = ("gray16be.tif", "gray16.tif", "gray16le.tif", "gray16.png", "int32.tif", "float01.tif", "float255.tif")


@pytest.fixture
def odd_folder(tmp_path):
    root = tmp_path / "odd"
    root.mkdir()
    (root / "good-red.png").write_bytes(png(RED))
    (root / "good-red.txt").write_text("a red square")
    (root / "good-blue.png").write_bytes(png(BLUE))
    for name, data in odd_images().items():
        (root / name).write_bytes(data)
    return root


# --- 1. image modes -------------------------------------------------------------------------------------------------


def test_odd_image_modes_are_converted_or_skipped_through_the_folder_source(odd_folder):
    dataset = open_dataset(odd_folder)
    items = {item.source: item for item in dataset}
    skipped = {s.source: s.reason for s in dataset.skipped}
    assert set(items) | set(skipped) == {p.name for p in odd_folder.iterdir() if p.suffix != ".txt"}
    assert set(skipped) == ODD_SKIPPED, skipped
    assert items["good-red.png"].image.getpixel((3, 3)) == RED and items["good-red.png"].caption == "a red square"
    assert items["good-blue.png"].image.getpixel((3, 3)) == BLUE
    for item in dataset:
        assert item.image.mode == "RGB" and item.image.size[0] > 0
    for name in SIXTEEN_BIT:  # scaled to 8 bits, not clipped at 255
        row = [items[name].image.getpixel((x, 1)) for x in range(8)]
        assert all(abs(r - g) <= 1 and r == gg == b for (r, gg, b), g in zip(row, GRAY8)), (name, row, GRAY8)
    rgb16 = [items["rgb16.png"].image.getpixel((x, 0))[0] for x in range(8)]
    assert all(abs(a - b) <= 1 for a, b in zip(rgb16, GRAY8)), rgb16
    assert items["anim.gif"].image.getpixel((2, 2)) == RED and items["pages.tif"].image.getpixel((2, 2)) == RED
    assert items["one.png"].image.size == (1, 1)
    assert "DecompressionBomb" in skipped["huge.png"] or "pixels" in skipped["huge.png"]


def test_the_dataset_command_counts_odd_images_instead_of_failing(odd_folder):
    code, out, err = run_cli("dataset", odd_folder)
    assert code == 0, err
    assert f"skipped {len(ODD_SKIPPED)}:" in out.splitlines()[-1] and "Traceback" not in err


@pytest.mark.parametrize("mode", Image.MODES)
def test_to_rgb_converts_every_mode_or_raises_image_error(mode):
    image = Image.new(mode, (3, 2))
    try:
        out = to_rgb(image)
    except ImageError as e:
        assert mode in str(e) and "\n" not in str(e)
        return
    assert out.mode == "RGB" and out.size == (3, 2)


def test_sixteen_bit_big_endian_keeps_its_values():
    out = open_image(encode(gray16("I;16B"), "TIFF"), "be.tif")
    assert [out.getpixel((x, 0))[0] for x in range(8)] == GRAY8


def test_eps_is_never_decoded(monkeypatch):
    """Pillow decodes EPS by running Ghostscript on the file's PostScript, which may loop for ever: a dataset's
    image is never EPS, whatever its name says."""
    from PIL import EpsImagePlugin

    def ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript ran on a dataset file")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    with pytest.raises(ImageError, match="not an image file"):
        open_image(encode(Image.new("RGB", (8, 8)), "EPS"), "page.png")


def test_the_pixel_limit_holds_when_pillows_is_switched_off(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # as some programs set it, process-wide
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match=r"12000x12000 is 144,000,000 pixels, over the 89,478,485 limit"):
            open_image(raw_png(12_000, 12_000, 8, 2), "huge.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB


# --- 2. zip limits --------------------------------------------------------------------------------------------------


def zip_of_zeros(path: Path, name: str, size: int, compress_type=zipfile.ZIP_DEFLATED, extra=None) -> Path:
    """A zip holding ``size`` zero bytes as member ``name`` (written in chunks: small in memory and on disk)."""
    info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
    info.compress_type = compress_type
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in (extra or {}).items():
            archive.writestr(member, data)
        with archive.open(info, "w", force_zip64=size > 2**31) as out:
            chunk = bytes(MiB)
            left = size
            while left:
                out.write(chunk[: min(left, MiB)])
                left -= min(left, MiB)
    return path


def lie_about_size(path: Path, name: str, declared: int) -> None:
    """Rewrite the member's uncompressed size in its local and central headers."""
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    for signature, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        at = data.find(signature)
        while at >= 0:
            if data[at + name_at : at + name_at + len(encoded)] == encoded:
                data[at + size_at : at + size_at + 4] = struct.pack("<I", declared)
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))


def test_a_member_just_over_the_real_limit_is_skipped_before_it_is_read(tmp_path):
    size = sources.MAX_MEMBER_BYTES + 1
    archive = zip_of_zeros(tmp_path / "bomb.zip", "big.png", size, extra={"good.png": png()})
    assert archive.stat().st_size < 2 * MiB
    started = time.monotonic()
    dataset = open_dataset(archive)
    assert time.monotonic() - started < 2  # refused on its declared size: nothing is decompressed
    assert [item.source for item in dataset] == ["good.png"]
    (skipped,) = dataset.skipped
    assert skipped.source == "big.png"
    assert f"{size:,} bytes" in skipped.reason and "256 MiB" in skipped.reason


@pytest.mark.parametrize("compress_type", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_an_oversized_member_is_skipped_naming_its_size_and_the_limit(tmp_path, monkeypatch, compress_type):
    monkeypatch.setattr(sources, "MAX_MEMBER_BYTES", MiB)
    archive = zip_of_zeros(tmp_path / "bomb.zip", "big.png", 3 * MiB, compress_type, extra={"good.png": png()})
    dataset = open_dataset(archive)
    assert [item.source for item in dataset] == ["good.png"]
    assert [(s.source, s.reason) for s in dataset.skipped] == [
        ("big.png", f"cannot be read ({3 * MiB:,} bytes decompressed, over the 1 MiB limit of one member)")
    ]


@pytest.mark.parametrize("compress_type", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_a_member_whose_header_lies_about_its_size_is_read_only_as_far_as_declared(tmp_path, compress_type):
    archive = zip_of_zeros(tmp_path / "liar.zip", "liar.png", 48 * MiB, compress_type, extra={"good.png": png()})
    lie_about_size(archive, "liar.png", 1000)
    assert zipfile.ZipFile(archive).getinfo("liar.png").file_size == 1000
    tracemalloc.start()
    try:
        dataset = open_dataset(archive)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [item.source for item in dataset] == ["good.png"]
    (skipped,) = dataset.skipped
    assert skipped.source == "liar.png" and "cannot be read" in skipped.reason
    assert peak < 16 * MiB, f"reading a member declared as 1,000 bytes took {peak / MiB:.0f} MiB"


def test_bzip2_and_lzma_members_that_are_honest_still_load(tmp_path):
    path = tmp_path / "methods.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("stored.png", png(RED), zipfile.ZIP_STORED)
        archive.writestr("bz.png", png(BLUE), zipfile.ZIP_BZIP2)
        archive.writestr("bz.txt", "a blue square", zipfile.ZIP_BZIP2)
        archive.writestr("xz.png", noise_png(3), zipfile.ZIP_LZMA)
    dataset = open_dataset(path)
    assert [(i.source, i.caption) for i in dataset] == [("bz.png", "a blue square"), ("stored.png", None),
                                                       ("xz.png", None)]  # fmt: skip
    assert dataset.items[0].image.getpixel((1, 1)) == BLUE and not dataset.skipped


def test_a_damaged_bzip2_member_is_skipped(tmp_path):
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("good.png", png())
        archive.writestr("bz.png", noise_png(1), zipfile.ZIP_BZIP2)
    data = bytearray(path.read_bytes())
    at = data.find(b"BZh")
    data[at + 200 : at + 210] = bytes(10)
    path.write_bytes(bytes(data))
    dataset = open_dataset(path)
    assert [i.source for i in dataset] == ["good.png"] and [s.source for s in dataset.skipped] == ["bz.png"]


def test_the_total_decompressed_bytes_of_a_zip_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_ZIP_BYTES", 20_000)
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(10):
            archive.writestr(f"img{i}.png", noise_png(i))  # ~3 KB each
    with pytest.raises(DatasetError) as raised:
        open_dataset(path)
    message = str(raised.value)
    assert "many.zip" in message and "over the 19.5 KiB limit" in message and "\n" not in message


def test_a_zip_with_a_hundred_thousand_members_is_read_in_bounded_time(tmp_path):
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.png", png(RED))
        archive.writestr("a.txt", "red")
        for i in range(100_000):
            archive.writestr(f"notes/{i}.txt", b"x")
    started = time.monotonic()
    dataset = open_dataset(path)
    assert time.monotonic() - started < 10
    assert [(i.source, i.caption) for i in dataset] == [("a.png", "red")]


def test_a_zip_of_many_broken_images_skips_each_quickly(tmp_path):
    path = tmp_path / "broken.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.png", png(RED))
        for i in range(5000):
            archive.writestr(f"bad/{i}.png", b"")
    started = time.monotonic()
    dataset = open_dataset(path)
    assert time.monotonic() - started < 5
    assert len(dataset) == 1 and len(dataset.skipped) == 5000
    assert len(dataset.summary()) < 1000  # the summary names a few, and counts the rest


def patch_headers(
    path: Path,
    name: str,
    *,
    flag: int = 0,
    method: int | None = None,
    version: int | None = None,
    rename: bytes | None = None,
) -> None:
    """Edit member ``name`` in the local and the central header: set flag bits, the method, the version needed, the
    name's bytes (same length)."""
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    # signature, then where the version needed, the flags, the method and the name are in that header
    for signature, at_version, at_name in ((b"PK\x03\x04", 4, 30), (b"PK\x01\x02", 6, 46)):
        at = data.find(signature)
        while at >= 0:
            if data[at + at_name : at + at_name + len(encoded)] == encoded:
                (flags,) = struct.unpack_from("<H", data, at + at_version + 2)
                struct.pack_into("<H", data, at + at_version + 2, flags | flag)
                if method is not None:
                    struct.pack_into("<H", data, at + at_version + 4, method)
                if version is not None and signature == b"PK\x01\x02":
                    struct.pack_into("<H", data, at + at_version, version)
                if rename is not None:
                    data[at + at_name : at + at_name + len(encoded)] = rename
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))


def hostile_zip(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("good.png", png(RED))
        if kind == "duplicate":
            archive.writestr("dup.png", b"not an image")
            with pytest.warns(UserWarning, match="Duplicate name"):
                archive.writestr("dup.png", png(BLUE))
        elif kind == "long-name":
            archive.writestr("x" * 10_000 + ".png", png(BLUE))
            archive.writestr("y" * 10_000 + ".png", b"broken")
        elif kind == "newline-name":
            archive.writestr("a\nb.png", b"broken")
        else:
            archive.writestr("odd.png", png(BLUE))
    if kind == "encrypted":
        patch_headers(path, "odd.png", flag=0x1)
    elif kind == "bad-utf8-name":  # the UTF-8 flag over a Latin-1 name
        patch_headers(path, "odd.png", flag=0x800, rename=b"od\xe9.png")
    elif kind == "too-new":
        patch_headers(path, "odd.png", version=99)  # version needed to extract: 9.9
    elif kind == "unknown-method":
        patch_headers(path, "odd.png", method=99)
    elif kind == "header-name-differs":
        data = path.read_bytes()
        at = data.rfind(b"PK\x03\x04")
        path.write_bytes(data[: at + 30] + b"ddd" + data[at + 33 :])
    elif kind == "empty-name":  # the central header's name becomes its comment: a member named ""
        data = bytearray(path.read_bytes())
        at = data.rfind(b"PK\x01\x02")
        (length,) = struct.unpack_from("<H", data, at + 28)
        struct.pack_into("<HHH", data, at + 28, 0, 0, length)
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "kind",
    ["duplicate", "encrypted", "long-name", "bad-utf8-name", "too-new", "unknown-method", "newline-name",
     "header-name-differs", "empty-name"],
)  # fmt: skip
def test_hostile_zips_give_items_skips_or_one_line_errors(tmp_path, kind):
    path = hostile_zip(tmp_path, kind)
    try:
        dataset = open_dataset(path)
    except DatasetError as e:
        assert "\n" not in str(e) and len(str(e)) < 1000
        assert kind in ("bad-utf8-name", "too-new"), e
        return
    assert "good.png" in [i.source for i in dataset]
    assert "\n" not in dataset.summary() and len(dataset.summary()) < 2000
    if kind == "duplicate":
        assert [i.source for i in dataset] == ["dup.png", "good.png"]  # the last one, as zipfile reads it
    if kind in ("encrypted", "unknown-method", "header-name-differs", "newline-name"):
        assert len(dataset.skipped) == 1, dataset.skipped
    if kind == "empty-name":
        assert [i.source for i in dataset] == ["good.png"] and not dataset.skipped


# --- 4. special files and odd metadata in folders ---------------------------------------------------------------

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
