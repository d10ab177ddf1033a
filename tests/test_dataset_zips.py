"""Hostile zip datasets: members over the size limits (zip bombs), headers that lie about sizes, bzip2 and LZMA
members (honest and damaged), the total decompressed size, archives of very many members, and hostile headers
(duplicate, encrypted, long, empty or non-UTF-8 names, unknown methods, versions too new).

Every member ends as a usable item or a ``Skipped`` with a reason, or the archive as a one-line ``DatasetError``;
nothing hangs or exhausts memory.
"""

from __future__ import annotations

import struct
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import BLUE, RED, MiB, encode, png
from PIL import Image

from lorastack.core.data import DatasetError, open_dataset
from lorastack.plugins import sources


@pytest.fixture(autouse=True)
def _fresh_plugins(plugin_manager):
    return plugin_manager


def noise_png(seed: int, size=(32, 32)) -> bytes:
    return encode(Image.frombytes("RGB", size, np.random.default_rng(seed).bytes(size[0] * size[1] * 3)), "PNG")


# --- zip limits --------------------------------------------------------------------------------------------------


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
