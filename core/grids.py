"""Image grids people can read: small tiles enlarged, labelled rows and columns, and a caption saying what was made.

A 64 px tile (the toy base's) is too small to see and too narrow for a label, so tiles under :data:`MIN_TILE` are
enlarged by a whole factor with nearest-neighbour resampling (every pixel stays a visible square, nothing is
invented). Labels are wrapped to their cell, never cut; a word too long for a line is broken inside.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: Tiles narrower or lower than this are enlarged (by a whole factor) for display.
MIN_TILE = 256
FONT_SIZE = 14
PAD = 4
#: The row-label strip's width, at most (labels wrap inside it).
ROW_LABEL_WIDTH = 160


def _font():
    from PIL import ImageFont

    return ImageFont.load_default(size=FONT_SIZE)


def display_tiles(images: Sequence[Any], min_side: int = MIN_TILE) -> list[Any]:
    """``images`` enlarged by the smallest whole factor that makes each side at least ``min_side`` (none if so)."""
    from PIL import Image

    width, height = images[0].size
    factor = max(1, math.ceil(min_side / max(1, min(width, height))))
    if factor == 1:
        return list(images)
    return [image.resize((image.width * factor, image.height * factor), Image.NEAREST) for image in images]


def wrap(text: str, width: int, draw, font) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels: at spaces, and inside a word too long for a line."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if draw.textlength(candidate, font=font) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for char in word:  # a long name (a path, a registry reference) breaks where it must
                if line and draw.textlength(line + char, font=font) > width:
                    lines.append(line)
                    line = ""
                line += char
        lines.append(line)
    return lines


def _line_height(font) -> int:
    top, bottom = font.getbbox("Ag")[1::2]
    return bottom - top + 3


def labelled_grid(
    rows: Sequence[Sequence[Any]],
    columns: Sequence[str],
    row_labels: Sequence[str] | None = None,
    caption: str | None = None,
    *,
    min_tile: int = MIN_TILE,
):
    """One image: ``rows`` of tiles under a label per column, a label left of each row, and ``caption`` above.

    The tiles themselves are laid out by :func:`diffusers.utils.make_image_grid`.
    """
    from diffusers.utils import make_image_grid
    from PIL import Image, ImageDraw

    tiles = display_tiles([tile for row in rows for tile in row], min_tile)
    cell_w, cell_h = tiles[0].size
    body = make_image_grid(tiles, rows=len(rows), cols=len(columns))
    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = _line_height(font)
    left = min(ROW_LABEL_WIDTH, cell_w) + 2 * PAD if row_labels else 0
    width = left + body.width
    caption_lines = wrap(caption, width - 2 * PAD, measure, font) if caption else []
    column_lines = [wrap(label, cell_w - 2 * PAD, measure, font) for label in columns]
    head = PAD + len(caption_lines) * line_h + (PAD if caption_lines else 0)
    strip = max(len(lines) for lines in column_lines) * line_h + 2 * PAD
    grid = Image.new("RGB", (width, head + strip + body.height), "white")
    draw = ImageDraw.Draw(grid)
    for i, line in enumerate(caption_lines):
        draw.text((PAD, PAD + i * line_h), line, fill="black", font=font)
    for c, lines in enumerate(column_lines):
        for i, line in enumerate(lines):
            draw.text((left + c * cell_w + PAD, head + PAD + i * line_h), line, fill="black", font=font)
    grid.paste(body, (left, head + strip))
    for r, label in enumerate(row_labels or []):
        top = head + strip + r * cell_h
        for i, line in enumerate(wrap(label, left - 2 * PAD, measure, font)[: max(1, (cell_h - PAD) // line_h)]):
            draw.text((PAD, top + PAD + i * line_h), line, fill="black", font=font)
    return grid
