"""Opening training data through dataset-source plugins, and reading images the same way everywhere.

``open_dataset("photos/")`` picks the source that recognises the location (or the one named), checks its options,
reads every item, and returns a ``Dataset``: the usable items plus the files that were skipped and why. An empty
dataset is an error here, before any model is loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LorastackError
from .interfaces import DatasetItem, Skipped, resolve_options

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTION_SUFFIXES = (".txt", ".caption")


class DatasetError(LorastackError):
    """A dataset that cannot be used: a missing location, no usable image, an unsafe archive."""


class ImageError(LorastackError):
    """An image file that cannot be decoded (truncated, not an image, unsupported)."""


def open_image(data: bytes | str | Path, name: str | None = None):
    """Decode ``data`` (bytes or a path) fully into an RGB ``PIL.Image`` with its EXIF orientation applied.

    Transparent images are composited on white (how they look in a viewer), grayscale and palette images are
    converted. Raises ``ImageError`` naming the file for anything that cannot be decoded completely.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = name or (str(data) if not isinstance(data, bytes) else "image")
    try:
        raw = data if isinstance(data, bytes) else Path(data).read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            image.load()  # decode now: a truncated file fails here, not later in a training step
        image = ImageOps.exif_transpose(image)
    # DecompressionBombError (over twice the pixel limit) is no OSError: without it a huge image escapes as a crash
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as e:
        reason = "not an image file" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        raise ImageError(f"{label}: cannot be read as an image ({reason})") from None
    return to_rgb(image)


def to_rgb(image):
    """An RGB copy of ``image``: alpha composited on white, other modes converted."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v * (1 / 256)).convert("L")
    return image.convert("RGB")


def jsonl_rows(text: str) -> list[tuple[int, dict]]:
    """The objects of a JSON-lines text with their 1-based line numbers (blank lines skipped).

    Raises ``ValueError("line N is not JSON (…)")`` or ``ValueError("line N is not a JSON object")``; callers add
    which file it is.
    """
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {number} is not JSON ({e.msg})") from None
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
        captioned = sum(1 for item in self.items if item.caption)
        text = f"{len(self.items)} images ({captioned} captioned) from {self.location} [{self.source}]"
        if self.skipped:
            text += f"; skipped {len(self.skipped)}: " + "; ".join(f"{s.source} ({s.reason})" for s in self.skipped)
        return text


def find_source(location: str, source: str | None = None):
    """The dataset-source plugin for ``location``: the named one, or the first that recognises it."""
    from lorastack.plugins.manager import get_manager

    manager = get_manager()
    if source is not None:
        return manager.get("dataset_sources", source)
    # More specific sources first: a source may set ``priority`` (default 0); the generic folder source is last.
    candidates = [manager.get("dataset_sources", name) for name in manager.names("dataset_sources")]
    for candidate in sorted(candidates, key=lambda c: -getattr(c, "priority", 0)):
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
        why = f"; skipped {len(dataset.skipped)}: " + "; ".join(
            f"{s.source} ({s.reason})" for s in dataset.skipped[:5]
        ) if dataset.skipped else ""  # fmt: skip
        raise DatasetError(f"dataset {location!r} has no usable image{why}")
    return dataset
