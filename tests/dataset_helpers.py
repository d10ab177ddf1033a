"""Image bytes for the dataset tests: colours, 16-bit samples, and PNG/TIFF files written in memory or by hand."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

RED, BLUE = (220, 30, 30), (30, 40, 220)
MiB = 2**20
#: 16-bit samples and what scaling them to 8 bits gives (round(v * 255 / 65535))
GRAY16 = [0, 257, 1000, 32768, 65535, 12345, 40000, 65280]
GRAY8 = [round(v * 255 / 65535) for v in GRAY16]


def encode(image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def png(colour=RED, size=(16, 16)) -> bytes:
    return encode(Image.new("RGB", size, colour), "PNG")


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
