"""Opening training data through dataset-source plugins, and reading images the same way everywhere.

``open_dataset("photos/")`` picks the source that recognises the location (or the one named), checks its options,
reads every item, and returns a ``Dataset``: the usable items plus the files that were skipped and why. An empty
dataset is an error here, before any model is loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LorastackError
from .interfaces import DatasetItem, DatasetSource, Skipped, optional_member, resolve_options

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTION_SUFFIXES = (".txt", ".caption")
#: The most bytes one file of a dataset may hold (an image, a metadata file). An uncompressed 8K x 8K RGB image,
#: far beyond any training image, is 192 MiB; a bigger file is a mistake (a video, a disk image, a sparse file) and
#: would be read whole into memory.
MAX_FILE_BYTES = 256 * 2**20
#: The most pixels an image may have when Pillow's own limit (``PIL.Image.MAX_IMAGE_PIXELS``) is switched off: that
#: limit's default, some 89 megapixels (9,459 x 9,459), 268 MiB as RGB.
MAX_IMAGE_PIXELS = 89_478_485
#: Formats never decoded: Pillow reads EPS by running Ghostscript, on PostScript that may loop for ever.
_REFUSED_FORMATS = ("EPS",)
_SKIPPED_SHOWN = 5  # skipped files a summary or an error names; it counts the rest


class DatasetError(LorastackError):
    """A dataset that cannot be used: a missing location, no usable image, an unsafe archive."""


class ImageError(LorastackError):
    """An image file that cannot be decoded (truncated, not an image, unsupported)."""


def format_size(size: int) -> str:
    """``size`` bytes for people: ``512 bytes``, ``64 KiB``, ``19.5 KiB``, ``256 MiB``, ``8 GiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


_FILE_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def read_file(path: str | Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file at ``path`` (symlinks followed), if it holds at most ``limit`` bytes.

    Raises ``OSError`` with a message for people for anything else: a missing or unreadable file, a folder, a FIFO,
    a device or a socket (reading a FIFO blocks until someone writes to it, ``/dev/zero`` never ends), or a file
    over ``limit`` bytes. Nothing but a regular file is ever opened for reading.
    """
    kind = _FILE_KINDS.get(stat.S_IFMT(os.stat(path).st_mode))
    if kind is not None:
        raise OSError(f"not a regular file ({kind})")
    # O_NONBLOCK: a file swapped for a FIFO after the check still cannot block the open; fstat then refuses it
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with open(fd, "rb", closefd=True) as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"not a regular file ({_FILE_KINDS.get(stat.S_IFMT(info.st_mode), 'a special file')})")
        if info.st_size > limit:
            raise OSError(f"{info.st_size:,} bytes, over the {format_size(limit)} limit")
        data = f.read(limit + 1)  # a file may grow after fstat
    if len(data) > limit:
        raise OSError(f"more than {limit:,} bytes, over the {format_size(limit)} limit")
    return data


def open_image(data: bytes | str | Path, name: str | None = None):
    """Decode ``data`` (bytes or a path) fully into an RGB ``PIL.Image`` with its EXIF orientation applied.

    Transparent images are composited on white (how they look in a viewer), grayscale, palette, CMYK, Lab and
    16-bit or float images are converted (see ``to_rgb``). A path is read with ``read_file`` (regular files of at
    most ``MAX_FILE_BYTES``). Raises ``ImageError`` naming the file for anything that cannot be decoded completely
    or converted.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = name or (str(data) if not isinstance(data, bytes) else "image")
    try:
        raw = data if isinstance(data, bytes) else read_file(data)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.init()
            image = Image.open(io.BytesIO(raw), formats=[f for f in Image.OPEN if f not in _REFUSED_FORMATS])
            pixels, most = image.size[0] * image.size[1], Image.MAX_IMAGE_PIXELS or MAX_IMAGE_PIXELS
            if pixels > most:  # checked before decoding, also when Pillow's limit is off
                raise ValueError(f"{image.size[0]}x{image.size[1]} is {pixels:,} pixels, over the {most:,} limit")
            image.load()  # decode now: a truncated file fails here, not later in a training step
        image = ImageOps.exif_transpose(image)
        if min(image.size) < 1:
            raise ValueError(f"it has no pixels ({image.size[0]}x{image.size[1]})")
        return to_rgb(image, label)
    # Decoders of untrusted files fail in many ways besides OSError: SyntaxError and ValueError (bad headers),
    # DecompressionBombError (over twice the pixel limit), struct.error, EOFError, KeyError, ZeroDivisionError (bad
    # EXIF or TIFF tags), MemoryError. Each means "this file cannot be used", never "stop the whole dataset".
    except ImageError:
        raise
    except Exception as e:  # DecompressionBombWarning too: it is raised as an error above
        reason = "not an image file" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        raise ImageError(f"{label}: cannot be read as an image ({one_line(reason)})") from None


_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(image, name: str | None = None):
    """An RGB copy of ``image``: alpha composited on white, other modes converted.

    16-bit images (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, and ``I``, which Pillow gives 16-bit PNGs) are scaled
    to 8 bits (``v * 255 / 65535``, rounded; ``I`` values outside 0–65535 are clipped). Float images (``F``) are
    taken as 0–1 when every value lies in that range, else as 0–255 (clipped); NaN is black. Raises ``ImageError``
    (naming ``name``) for a mode that cannot be converted.
    """
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image
    try:
        if mode == "La":  # premultiplied alpha: Pillow converts it to LA only
            image = image.convert("LA")
        if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        if mode in _SIXTEEN_BIT_MODES or mode == "F":
            image = Image.fromarray(_eight_bit(image))
        return image.convert("RGB")
    except (ValueError, OSError, TypeError) as e:
        raise ImageError(f"{name or 'image'}: mode {mode} cannot be converted to RGB ({one_line(str(e))})") from None


def _eight_bit(image):
    """The pixels of a 16-bit or float single-channel image as an 8-bit array (``uint8``)."""
    import numpy as np

    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    values = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)  # I;16B arrives big-endian: any byte order
    return ((values * 255 + 32767) // 65535).astype(np.uint8)


def one_line(text: str, limit: int = 300) -> str:
    """``text`` for a one-line message: control characters (newlines included) escaped, cut at ``limit``."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def jsonl_rows(text: str) -> list[tuple[int, dict]]:
    """The objects of a JSON-lines text with their 1-based line numbers (blank lines skipped).

    Lines end at ``\\n`` only (a JSON string may hold U+2028 and other characters ``str.splitlines`` breaks at); a
    byte order mark opening a line is ignored. Raises ``ValueError("line N is not JSON (…)")`` or
    ``ValueError("line N is not a JSON object")``; callers add which file it is.
    """
    rows = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.lstrip("\ufeff")
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {number} is not JSON ({e.msg})") from None
        except RecursionError:
            raise ValueError(f"line {number} is not JSON (nested too deeply)") from None
        except ValueError as e:  # an integer of over 4,300 digits, which Python refuses to convert
            raise ValueError(f"line {number} is not JSON ({one_line(str(e).split(':')[0], 80)})") from None
        if not isinstance(row, dict):
            raise ValueError(f"line {number} is not a JSON object")
        rows.append((number, row))
    return rows


def image_key(data: bytes) -> str:
    """The cache identity of an image file's bytes."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class Dataset:
    """The items a source produced, and what it skipped."""

    location: str
    source: str
    items: list[DatasetItem] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def summary(self) -> str:
        """One line: the count, the captioned count, and the skipped files (the first few named, the rest counted)."""
        captioned = sum(1 for item in self.items if item.caption)
        text = f"{len(self.items)} images ({captioned} captioned) from {one_line(self.location)} [{self.source}]"
        if self.skipped:
            text += f"; skipped {_skipped_text(self.skipped)}"
        return text


def _skipped_text(skipped: list[Skipped]) -> str:
    named = "; ".join(f"{one_line(s.source, 120)} ({one_line(s.reason, 200)})" for s in skipped[:_SKIPPED_SHOWN])
    more = len(skipped) - _SKIPPED_SHOWN
    return f"{len(skipped)}: {named}" + (f"; and {more} more" if more > 0 else "")


def find_source(location: str, source: str | None = None):
    """The dataset-source plugin for ``location``: the named one, or the first that recognises it."""
    from lorastack.plugins.manager import get_manager

    manager = get_manager()
    if source is not None:
        return manager.get("dataset_sources", source)
    # More specific sources first: a source may set ``priority`` (default 0); the generic folder source is last.
    candidates = [manager.get("dataset_sources", name) for name in manager.names("dataset_sources")]
    for candidate in sorted(candidates, key=lambda c: -optional_member(c, DatasetSource, "priority")):
        if candidate.detect(location):
            return candidate
    available = ", ".join(manager.names("dataset_sources")) or "none"
    if not Path(location).exists():
        raise DatasetError(f"dataset {location!r} does not exist and no source recognises it; sources: {available}")
    raise DatasetError(f"no dataset source recognises {location!r}; name one with --source ({available})")


def open_dataset(
    location: str | Path,
    source: str | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    allow_empty: bool = False,
) -> Dataset:
    """Read every item of a dataset through its source plugin. Empty datasets are an error unless allowed."""
    location = str(location)
    plugin = find_source(location, source)
    resolved = resolve_options(plugin.options, dict(options or {}), f"dataset source {plugin.name!r}")
    dataset = Dataset(location, plugin.name)
    for entry in plugin.open(location, resolved):
        if isinstance(entry, Skipped):
            dataset.skipped.append(entry)
        else:
            dataset.items.append(entry)
    if not dataset.items and not allow_empty:
        why = f"; skipped {_skipped_text(dataset.skipped)}" if dataset.skipped else ""
        raise DatasetError(f"dataset {one_line(repr(location))} has no usable image{why}")
    return dataset
