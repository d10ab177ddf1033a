"""Reading a tree of image files (a folder, a zip archive's members) into dataset items.

Shared by the ``folder`` and ``zip`` sources, which differ only in how they list and read files. Images pair with
captions from sidecars (``a.png`` + ``a.txt``) or from a ``metadata.csv``/``metadata.jsonl`` (the Hugging Face
``imagefolder`` convention: ``file_name`` relative to the metadata file, and a ``text`` or ``caption`` column), with
masks (``a_mask.png`` or ``masks/a.png``) and with a concept from a kohya-style folder name (``10_aawxbc figurine``).
"""

from __future__ import annotations

import csv
import io
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorastack.core.data import (
    CAPTION_SUFFIXES,
    IMAGE_SUFFIXES,
    DatasetError,
    ImageError,
    image_key,
    jsonl_rows,
    open_image,
)
from lorastack.core.interfaces import DatasetItem, Option, Skipped

METADATA_FILES = ("metadata.csv", "metadata.jsonl")
TEXT_COLUMNS = ("text", "caption")
MASK_FOLDER = "masks"
_KOHYA_FOLDER = re.compile(r"^\d+_(.+)$")

CAPTION_OPTION = Option(
    "caption_extension",
    "choice",
    default="auto",
    choices=("auto", ".txt", ".caption", "none"),
    help="Sidecar caption files to read: auto takes .txt, else .caption; none ignores sidecars.",
)
MASK_OPTION = Option(
    "mask_suffix",
    "str",
    default="_mask",
    help="IMAGE<suffix>.png beside an image (or masks/IMAGE.png) is its mask, not an image; empty: masks/ only.",
)


@dataclass
class FileTree:
    """Files under a root, by posix path relative to it, and how to read them.

    :param label: the location, for error messages
    :param names: the files' relative paths (hidden files and ``__MACOSX`` already left out or not)
    :param read: the bytes of one file; raises ``OSError`` when it cannot
    :param path: the file on disk, or ``None`` when there is none (an archive member)
    """

    label: str
    names: list[str]
    read: Callable[[str], bytes]
    path: Callable[[str], Path | None] = lambda name: None


def ignored(name: str) -> bool:
    """Files no dataset means to hold: dot files (``.DS_Store``, ``._a.png``) and macOS ``__MACOSX`` folders."""
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))


def _is_image(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _top_level(name: str) -> bool:
    folder = posixpath.dirname(name)
    return folder in ("", MASK_FOLDER)


def _stem_key(name: str) -> tuple[str, str]:
    return posixpath.dirname(name), posixpath.splitext(posixpath.basename(name))[0]


def read_items(tree: FileTree, options: Mapping[str, Any], recursive: bool = True) -> Iterator[DatasetItem | Skipped]:
    """One ``DatasetItem`` per usable image of ``tree`` and one ``Skipped`` per file it could not use, sorted."""
    names = sorted({n for n in tree.names if not ignored(n) and (recursive or _top_level(n))})
    present = set(names)
    images = [n for n in names if _is_image(n)]
    masks, orphans = _pair_masks(images, options.get("mask_suffix") or "")
    captions, missing = _read_metadata(tree, [n for n in names if posixpath.basename(n) in METADATA_FILES], present)
    yield from missing
    mask_names = set(masks.values()) | {name for name, _ in orphans}
    skipped = dict(orphans)
    for name in images:
        if name in skipped:
            yield Skipped(name, skipped[name])
        elif name not in mask_names:
            yield _item(tree, name, masks.get(name), captions.get(name), present, options)


def _pair_masks(images: list[str], suffix: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Image → its mask file, and the mask files that have no image (with why)."""
    by_stem: dict[tuple[str, str], list[str]] = {}
    for name in images:
        by_stem.setdefault(_stem_key(name), []).append(name)
    masks: dict[str, str] = {}
    orphans: list[tuple[str, str]] = []
    for name in images:
        folder, stem = _stem_key(name)
        if posixpath.basename(folder) == MASK_FOLDER:
            target = (posixpath.dirname(folder), stem)
        elif suffix and stem.endswith(suffix) and stem != suffix:
            target = (folder, stem[: -len(suffix)])
        else:
            continue
        owners = [n for n in by_stem.get(target, []) if n != name]
        if not owners:
            orphans.append((name, f"a mask with no image named {posixpath.join(*target)}.*"))
        for owner in owners:
            masks[owner] = name
    return masks, orphans


def _read_metadata(tree: FileTree, files: list[str], present: set[str]) -> tuple[dict[str, str | None], list[Skipped]]:
    """Captions from the metadata files (deeper ones win), and a ``Skipped`` per row naming a missing image."""
    captions: dict[str, str | None] = {}
    missing: list[Skipped] = []
    for meta in sorted(files, key=lambda n: (n.count("/"), n)):
        try:
            text = tree.read(meta).decode("utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"dataset {tree.label!r}: {meta} cannot be read as UTF-8 text ({e})") from None
        rows = _rows(tree.label, meta, text)
        for number, row in rows:
            file_name = row.get("file_name")
            if not isinstance(file_name, str) or not file_name.strip():
                raise DatasetError(f"dataset {tree.label!r}: {meta} row {number} has no file_name")
            name = posixpath.normpath(posixpath.join(posixpath.dirname(meta), file_name.strip().replace("\\", "/")))
            if name not in present:
                missing.append(Skipped(name, f"listed in {meta} (row {number}) but not in the dataset"))
                continue
            caption = next((row[c] for c in TEXT_COLUMNS if row.get(c) is not None), None)
            captions[name] = (str(caption).strip() or None) if caption is not None else None
    return captions, missing


def _rows(label: str, meta: str, text: str) -> list[tuple[int, dict[str, Any]]]:
    """The rows of a metadata file with their 1-based numbers; an error naming the file when it is malformed."""
    if meta.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        columns = reader.fieldnames or []
        if "file_name" not in columns:
            listed = ", ".join(columns) or "none"
            raise DatasetError(f"dataset {label!r}: {meta} has no file_name column (its columns: {listed})")
        return list(enumerate(reader, 1))
    try:
        return jsonl_rows(text)
    except ValueError as e:
        raise DatasetError(f"dataset {label!r}: {meta} {e}") from None


def _item(
    tree: FileTree,
    name: str,
    mask_name: str | None,
    caption: str | None,
    present: set[str],
    options: Mapping[str, Any],
) -> DatasetItem | Skipped:
    try:
        data = tree.read(name)
    except OSError as e:
        return Skipped(name, f"cannot be read ({e})")
    try:
        image = open_image(data, name)
    except ImageError as e:
        return Skipped(name, str(e).removeprefix(f"{name}: "))
    if caption is None:
        try:
            caption = _sidecar(tree, name, present, options.get("caption_extension", "auto"))
        except (OSError, UnicodeDecodeError) as e:
            return Skipped(name, f"its caption file cannot be read as UTF-8 text ({e})")
    mask = None
    if mask_name is not None:
        try:
            mask = open_image(tree.read(mask_name), mask_name).convert("L")
        except (OSError, ImageError) as e:
            return Skipped(name, f"its mask {mask_name} cannot be read ({str(e).removeprefix(f'{mask_name}: ')})")
        if mask.size != image.size:
            size, mask_size = "x".join(map(str, image.size)), "x".join(map(str, mask.size))
            return Skipped(name, f"its mask {mask_name} is {mask_size}, the image is {size}")
    folder = posixpath.basename(posixpath.dirname(name))
    kohya = _KOHYA_FOLDER.match(folder)
    concept = (kohya.group(1).strip() or None) if kohya else None
    return DatasetItem(image, caption, name, mask=mask, concept=concept, key=image_key(data), path=tree.path(name))


def _sidecar(tree: FileTree, name: str, present: set[str], extension: str) -> str | None:
    if extension == "none":
        return None
    suffixes = CAPTION_SUFFIXES if extension == "auto" else (extension,)
    base = posixpath.splitext(name)[0]
    for suffix in suffixes:
        if base + suffix in present:
            return tree.read(base + suffix).decode("utf-8-sig").strip() or None
    return None
