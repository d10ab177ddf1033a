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

from lorastack.plugins.api import (
    CAPTION_SUFFIXES,
    IMAGE_SUFFIXES,
    MAX_FILE_BYTES,
    DatasetError,
    DatasetItem,
    ImageError,
    Option,
    Skipped,
    format_size,
    image_key,
    jsonl_rows,
    one_line,
    open_image,
)

METADATA_FILES = ("metadata.csv", "metadata.jsonl")
TEXT_COLUMNS = ("text", "caption")
MASK_FOLDER = "masks"
#: The most bytes (UTF-8) a caption may hold, from a sidecar or a metadata file. CLIP reads 75 tokens (a few hundred
#: characters) and kohya-style tag lists run to a few KB; 64 KiB is far beyond any real caption, and bounds what many
#: sparse or runaway caption files can cost in memory.
MAX_CAPTION_BYTES = 64 * 2**10
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
    :param read: ``read(name, limit)``: the bytes of one file; raises ``OSError`` (its message says why, for people)
        when it cannot, when the file is no regular file, or when it holds more than ``limit`` bytes
    :param path: the file on disk, or ``None`` when there is none (an archive member)
    """

    label: str
    names: list[str]
    read: Callable[[str, int], bytes]
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
    metadata = [n for n in names if posixpath.basename(n) in METADATA_FILES]
    captions, bad_captions, missing = _read_metadata(tree, metadata, present)
    yield from missing
    mask_names = set(masks.values()) | {name for name, _ in orphans}
    skipped = {**bad_captions, **dict(orphans)}
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


def _read_metadata(
    tree: FileTree, files: list[str], present: set[str]
) -> tuple[dict[str, str | None], dict[str, str], list[Skipped]]:  # fmt: skip
    """Captions from the metadata files (deeper ones win), the images whose caption is unusable (with why), and a
    ``Skipped`` per row naming a missing image."""
    captions: dict[str, str | None] = {}
    bad: dict[str, str] = {}
    missing: list[Skipped] = []
    for meta in sorted(files, key=lambda n: (n.count("/"), n)):
        shown = one_line(meta, 200)
        try:
            text = tree.read(meta, MAX_FILE_BYTES).decode("utf-8-sig")
        except OSError as e:
            raise DatasetError(f"dataset {tree.label!r}: {shown} cannot be read ({_why(e)})") from None
        except UnicodeDecodeError as e:
            raise DatasetError(f"dataset {tree.label!r}: {shown} cannot be read as UTF-8 text ({e})") from None
        rows = _rows(tree.label, meta, text)
        for number, row in rows:
            file_name = row.get("file_name")
            if file_name is not None and not isinstance(file_name, str):
                raise DatasetError(f"dataset {tree.label!r}: {shown} row {number} file_name is "
                                   f"{_kind(file_name)}, not a file name")  # fmt: skip
            if not file_name or not file_name.strip():
                raise DatasetError(f"dataset {tree.label!r}: {shown} row {number} has no file_name")
            name = posixpath.normpath(posixpath.join(posixpath.dirname(meta), file_name.strip().replace("\\", "/")))
            if name not in present:
                missing.append(Skipped(name, f"listed in {meta} (row {number}) but not in the dataset"))
                continue
            value = next((row[c] for c in TEXT_COLUMNS if row.get(c) is not None), None)
            try:
                captions[name] = _metadata_caption(value)
                bad.pop(name, None)
            except ValueError as e:
                bad[name] = f"its caption in {meta} (row {number}) {e}"
                captions.pop(name, None)
    return captions, bad, missing


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, int | float):
        return "a number"
    return {list: "a list", dict: "a dict"}.get(type(value), f"a {type(value).__name__}")


def _metadata_caption(value: Any) -> str | None:
    """A metadata cell as a caption: text, a number as text, or a list's first text (several captions per image,
    COCO style); ``ValueError(why)`` for anything else, text that is no valid Unicode, or a caption over
    ``MAX_CAPTION_BYTES``."""
    if isinstance(value, list) and (not value or any(isinstance(v, str) for v in value)):
        value = next((v for v in value if isinstance(v, str) and v.strip()), None)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"is {_kind(value)}, not text")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # JSON may hold lone surrogates ("\\ud800"); no tokenizer reads them
        raise ValueError("is not valid Unicode text (it holds a lone surrogate)") from None
    if size > MAX_CAPTION_BYTES:
        raise ValueError(f"is {size:,} bytes, over the {format_size(MAX_CAPTION_BYTES)} limit of a caption")
    return value.strip() or None


def _rows(label: str, meta: str, text: str) -> list[tuple[int, dict[str, Any]]]:
    """The rows of a metadata file with their 1-based numbers; an error naming the file when it is malformed."""
    shown = one_line(meta, 200)
    if meta.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text, newline=""))
        # csv refuses fields over 128 KiB (a process-wide setting some libraries raise): lift it for this file, which
        # is bounded, so a long caption is judged by MAX_CAPTION_BYTES as in a metadata.jsonl
        field_limit = csv.field_size_limit(MAX_FILE_BYTES)
        try:
            columns = reader.fieldnames or []
            if "file_name" not in columns:
                listed = one_line(", ".join(columns)) or "none"
                raise DatasetError(f"dataset {label!r}: {shown} has no file_name column (its columns: {listed})")
            return list(enumerate(reader, 1))
        except csv.Error as e:
            raise DatasetError(f"dataset {label!r}: {shown} is not CSV after line {reader.line_num} ({e})") from None
        finally:
            csv.field_size_limit(field_limit)
    try:
        return jsonl_rows(text)
    except ValueError as e:
        raise DatasetError(f"dataset {label!r}: {shown} {e}") from None


def _item(
    tree: FileTree,
    name: str,
    mask_name: str | None,
    caption: str | None,
    present: set[str],
    options: Mapping[str, Any],
) -> DatasetItem | Skipped:
    try:
        data = tree.read(name, MAX_FILE_BYTES)
    except OSError as e:
        return Skipped(name, f"cannot be read ({_why(e)})")
    try:
        image = open_image(data, name)
    except ImageError as e:
        return Skipped(name, str(e).removeprefix(f"{name}: "))
    if caption is None:
        try:
            caption = _sidecar(tree, name, present, options.get("caption_extension", "auto"))
        except UnicodeDecodeError as e:
            return Skipped(name, f"its caption file cannot be read as UTF-8 text ({e})")
        except OSError as e:
            return Skipped(name, f"its caption file cannot be read ({_why(e)})")
    mask = None
    if mask_name is not None:
        try:
            mask = open_image(tree.read(mask_name, MAX_FILE_BYTES), mask_name).convert("L")
        except OSError as e:
            return Skipped(name, f"its mask {mask_name} cannot be read ({_why(e)})")
        except ImageError as e:
            return Skipped(name, f"its mask {mask_name} cannot be read ({str(e).removeprefix(f'{mask_name}: ')})")
        if mask.size != image.size:
            size, mask_size = "x".join(map(str, image.size)), "x".join(map(str, mask.size))
            return Skipped(name, f"its mask {mask_name} is {mask_size}, the image is {size}")
    folder = posixpath.basename(posixpath.dirname(name))
    kohya = _KOHYA_FOLDER.match(folder)
    concept = (kohya.group(1).strip() or None) if kohya else None
    return DatasetItem(image, caption, name, mask=mask, concept=concept, key=image_key(data), path=tree.path(name))


def _why(error: OSError) -> str:
    """An ``OSError``'s reason without the path it names (the item already names the file)."""
    return one_line(error.strerror or str(error)) if error.errno is not None else one_line(str(error))


def _sidecar(tree: FileTree, name: str, present: set[str], extension: str) -> str | None:
    if extension == "none":
        return None
    suffixes = CAPTION_SUFFIXES if extension == "auto" else (extension,)
    base = posixpath.splitext(name)[0]
    for suffix in suffixes:
        if base + suffix in present:
            return tree.read(base + suffix, MAX_CAPTION_BYTES).decode("utf-8-sig").strip() or None
    return None
