"""Hostile dataset images: every Pillow mode, 16-bit and float samples, animations and pages, empty and huge images,
unknown compressions, EPS, and the pixel limit when Pillow's own is switched off.

Every image ends as an RGB item or a ``Skipped`` with a reason; nothing crashes or exhausts memory. Zip archives
are covered in ``test_dataset_zips.py``; special files, metadata and the property over any folder or zip in
``test_dataset_folders.py``.
"""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
from cli_helpers import run_cli
from dataset_helpers import BLUE, GRAY8, GRAY16, RED, MiB, encode, gray16, png, raw_png
from PIL import Image

from lorastack.core.data import ImageError, open_dataset, open_image, to_rgb


@pytest.fixture(autouse=True)
def _fresh_plugins(plugin_manager):
    return plugin_manager


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


# --- image modes -------------------------------------------------------------------------------------------------


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
