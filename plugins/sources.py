"""The built-in dataset sources: ``folder``, ``zip`` and ``hf``.

Written like a third-party plugin: from lorastack it imports ``lorastack.plugins.api`` only (and its own helper
module ``_filetree``). Locations:

* ``folder``: a directory of images, searched recursively, captions from ``.txt``/``.caption`` sidecars or a
  ``metadata.csv``/``metadata.jsonl`` (``file_name`` and ``text`` or ``caption`` columns), masks from
  ``IMAGE_mask.png`` or ``masks/IMAGE.png``, a concept from kohya folder names (``10_aawxbc figurine``);
* ``zip``: a ``.zip`` file holding such a folder, in any layout (read in memory, never extracted);
* ``hf``: a Hugging Face dataset: a folder written by ``save_to_disk``, ``hf:PATH`` (a saved folder, or a local folder
  or file ``datasets.load_dataset`` reads: images with a metadata file, parquet, …), ``hf:BUILDER:PATH``
  (``hf:imagefolder:photos/``) or ``hf:owner/name`` (a Hub dataset; offline, from the datasets cache).
"""

from __future__ import annotations

import bz2
import lzma
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lorastack.plugins.api import (
    MAX_FILE_BYTES,
    DatasetError,
    DatasetItem,
    ImageError,
    Option,
    Skipped,
    format_size,
    hookimpl,
    image_key,
    one_line,
    open_image,
    read_file,
)

from ._filetree import CAPTION_OPTION, MASK_FOLDER, MASK_OPTION, FileTree, ignored, read_items

# Files ``save_to_disk`` writes: a folder holding one is a Hugging Face dataset, not a folder of images.
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
# ``hf:BUILDER:PATH``: the packaged ``datasets`` builders that read local files.
HF_BUILDERS = ("imagefolder", "parquet", "arrow", "csv", "json", "webdataset")
HF_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}
TEXT_COLUMNS = ("text", "caption")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")

# Zip members are decompressed in memory, and a few KB of DEFLATE or bzip2 can expand to gigabytes (a zip bomb).
#: The most bytes one member may decompress to: the limit of one file of a folder dataset (an image, a metadata file).
MAX_MEMBER_BYTES = MAX_FILE_BYTES
#: The most bytes all members of one zip may decompress to: some 40,000 photos of 200 KB. Members that point at the
#: same compressed data (an overlapping zip bomb) each count; a bigger dataset reads as a folder, extracted.
MAX_ZIP_BYTES = 8 * 2**30
#: Compressed bytes read at once. bzip2 turns 4 KB into up to 5 GB in one call and zipfile gives its bzip2 and LZMA
#: decompressors no output bound, so those members are decompressed here, with one.
_CHUNK = 64 * 2**10
# What zipfile raises for a damaged, encrypted, oddly compressed or badly named archive or member
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    ValueError,
    struct.error,
    zlib.error,
    lzma.LZMAError,
    OverflowError,
)


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in HF_MARKERS)


# --- folder -------------------------------------------------------------------------------------------------------


class FolderSource:
    name = "folder"
    priority = -10  # the generic fallback: more specific sources (hf save_to_disk folders, …) detect first
    description = "A folder of images with .txt/.caption sidecars or a metadata.csv/.jsonl (file_name, text)."
    options = (
        CAPTION_OPTION,
        Option("recursive", "bool", default=True, help="Read images in subfolders too."),
        MASK_OPTION,
    )

    def detect(self, location: str) -> bool:
        path = Path(location)
        return path.is_dir() and not _is_hf_folder(path)

    def open(self, location: str, options: Mapping[str, Any]) -> Iterator[DatasetItem | Skipped]:
        root = Path(location).expanduser()
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise DatasetError(f"dataset folder {location!r} {what}")
        recursive = options.get("recursive", True)
        tree = FileTree(
            location, _list_folder(root, recursive), lambda name, limit: read_file(root / name, limit),
            lambda name: root / name,
        )  # fmt: skip
        return read_items(tree, options, recursive=recursive)


def _list_folder(root: Path, recursive: bool) -> list[str]:
    names = []
    for folder, dirnames, filenames in os.walk(root):
        here = Path(folder).relative_to(root).as_posix()
        # prune early: a .git or __MACOSX folder can be large, and a flat read only needs masks/
        dirnames[:] = [d for d in dirnames if not ignored(d) and (recursive or (here == "." and d == MASK_FOLDER))]
        names += [f if here == "." else f"{here}/{f}" for f in filenames]
    return names


# --- zip ----------------------------------------------------------------------------------------------------------


class ZipSource:
    name = "zip"
    description = "A .zip of images in any layout (sidecars or a metadata.csv inside), read without extracting."
    options = (CAPTION_OPTION, MASK_OPTION)

    def detect(self, location: str) -> bool:
        return location.lower().endswith(".zip") and Path(location).is_file()

    def open(self, location: str, options: Mapping[str, Any]) -> Iterator[DatasetItem | Skipped]:
        path = Path(location).expanduser()
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise DatasetError(f"zip file {location!r} {what}")
        archive = _open_zip(path, location)
        try:
            members = _check_members(archive, location)  # before a single member is read
        except DatasetError:
            archive.close()
            raise
        return self._read(archive, path, location, members, options)

    @staticmethod
    def _read(
        archive: zipfile.ZipFile, path: Path, location: str, members: dict[str, zipfile.ZipInfo], options
    ) -> Iterator[DatasetItem | Skipped]:  # fmt: skip
        total = 0  # bytes decompressed so far, over all members

        with archive:

            def read(name: str, limit: int) -> bytes:
                nonlocal total
                info = members[name]
                limit = min(limit, MAX_MEMBER_BYTES)
                if info.file_size > limit:
                    which = " of one member" if limit == MAX_MEMBER_BYTES else ""  # else the caller's, of a caption
                    raise OSError(f"{info.file_size:,} bytes decompressed, over the {format_size(limit)} limit{which}")
                if total + info.file_size > MAX_ZIP_BYTES:
                    raise DatasetError(
                        f"zip file {location!r} decompresses to over the {format_size(MAX_ZIP_BYTES)} limit of one "
                        f"dataset (reached at {one_line(name, 200)}); extract it and read the folder instead"
                    )
                try:
                    data = _member_bytes(archive, path, info)
                except _ZIP_ERRORS as e:
                    # a corrupt, encrypted or oddly compressed member, or one that holds more than it declares
                    raise OSError(one_line(str(e) or type(e).__name__)) from None
                total += len(data)
                return data

            yield from read_items(FileTree(location, list(members), read), options)


def _open_zip(path: Path, location: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except _ZIP_ERRORS as e:
        why = one_line(str(e) or type(e).__name__)
        raise DatasetError(f"{location!r} cannot be read as a zip file ({why})") from None


def _check_members(archive: zipfile.ZipFile, location: str) -> dict[str, zipfile.ZipInfo]:
    """Member name with ``/`` separators → the member; an error when any name could escape an extraction folder.

    Of members with the same name the last one counts, as in ``zipfile``.
    """
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(name) or ".." in parts:
            raise DatasetError(
                f"zip file {location!r} has an unsafe member {one_line(repr(name))} (an absolute path or '..'); "
                "refusing to read it"
            )
        if not name.endswith("/"):  # not ZipInfo.is_dir(): that fails on an empty name
            members["/".join(p for p in parts if p not in ("", "."))] = info
    return members


def _member_bytes(archive: zipfile.ZipFile, path: Path, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes, never more than its declared ``file_size`` (which the caller has bounded).

    Headers can lie: a member that holds more than it declares is an error, found without decompressing the rest.
    """
    if info.compress_type in (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        return _decompress(path, info)
    chunks, size = [], 0
    # zipfile bounds each DEFLATE read by the size asked for, and stops at the declared size (then checks the CRC)
    with archive.open(info) as member:
        while chunk := member.read(_CHUNK):
            size += len(chunk)
            if size > info.file_size:
                raise ValueError(f"it holds more than the {info.file_size:,} bytes its header declares")
            chunks.append(chunk)
    return b"".join(chunks)


def _decompress(path: Path, info: zipfile.ZipInfo) -> bytes:
    """A bzip2 or LZMA member, decompressed with an output bound of its declared size (+1, to notice a lie)."""
    if info.flag_bits & 0x1:
        raise RuntimeError(f"{info.filename!r} is encrypted")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile("bad local file header")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        f.seek(name_length + extra_length, os.SEEK_CUR)
        left = info.compress_size
        decompressor: Any
        if info.compress_type == zipfile.ZIP_LZMA:
            # zip's LZMA: a version (2 bytes), the properties' size (2 bytes), the properties, then raw LZMA1 data
            prefix = f.read(4)
            if len(prefix) != 4:
                raise EOFError("truncated LZMA header")
            (props_size,) = struct.unpack("<H", prefix[2:])
            props = f.read(props_size)
            left -= 4 + props_size
            decompressor = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[_lzma_filter(props)])
        else:
            decompressor = bz2.BZ2Decompressor()
        out = bytearray()
        while not decompressor.eof:
            if decompressor.needs_input:
                if left <= 0:
                    break
                data = f.read(min(left, _CHUNK))
                if not data:
                    raise EOFError("the member's data is truncated")
                left -= len(data)
            else:
                data = b""
            out += decompressor.decompress(data, max_length=info.file_size + 1 - len(out))
            if len(out) > info.file_size:
                raise ValueError(f"it holds more than the {info.file_size:,} bytes its header declares")
    if len(out) != info.file_size:
        raise EOFError(f"it holds {len(out):,} bytes, its header declares {info.file_size:,}")
    if zlib.crc32(out) != info.CRC:
        raise zipfile.BadZipFile(f"bad CRC-32 for {info.filename!r}")
    return bytes(out)


def _lzma_filter(props: bytes) -> dict[str, int]:
    """The LZMA1 filter its 5 property bytes describe: ``lc + lp * 9 + pb * 45``, then the dictionary size."""
    if len(props) != 5 or props[0] >= 9 * 5 * 5:
        raise lzma.LZMAError("bad LZMA properties")
    lc, rest = props[0] % 9, props[0] // 9
    (dict_size,) = struct.unpack("<I", props[1:])
    return {"id": lzma.FILTER_LZMA1, "lc": lc, "lp": rest % 5, "pb": rest // 5, "dict_size": dict_size}


# --- Hugging Face datasets ----------------------------------------------------------------------------------------


class HfSource:
    name = "hf"
    description = "A Hugging Face dataset: a save_to_disk folder, hf:PATH, hf:imagefolder:PATH or hf:owner/name."
    options = (
        Option("split", "str", default="train", help="The split to read."),
        Option("image_column", "str", help="The image column (default: the first Image column, else 'image')."),
        Option(
            "caption_column", "str", help="The caption column (default: 'text', else 'caption'); 'none': no captions."
        ),
        Option("config", "str", help="The dataset configuration (subset) of a Hub dataset that has several."),
        Option("revision", "str", help="The Hub revision (branch, tag or commit) of a Hub dataset."),
        Option("cache_dir", "path", help="The datasets cache folder (default: HF_DATASETS_CACHE)."),
    )

    def detect(self, location: str) -> bool:
        return location.startswith("hf:") or _is_hf_folder(Path(location))

    def open(self, location: str, options: Mapping[str, Any]) -> Iterator[DatasetItem | Skipped]:
        try:
            import datasets
        except ImportError:
            raise DatasetError(
                f'the hf source needs the datasets library to read {location!r}: pip install "lorastack[datasets]"'
            ) from None
        loaded = _load(datasets, location, options)
        split = options.get("split") or "train"
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                splits = ", ".join(loaded) or "none"
                raise DatasetError(f"dataset {location!r} has no split {split!r}; its splits: {splits}")
            loaded = loaded[split]
        image_column, caption_column = _columns(datasets, loaded, location, options)
        table = loaded.select_columns([c for c in (image_column, caption_column) if c])
        if isinstance(table.features[image_column], datasets.Image):
            # raw bytes, decoded by open_image: one decoder (EXIF, RGB) everywhere, and a bad row is skipped
            table = table.cast_column(image_column, datasets.Image(decode=False))
        return _rows(table, loaded.split or split, image_column, caption_column)


def _load(datasets, location: str, options: Mapping[str, Any]):
    """The ``Dataset`` or ``DatasetDict`` at ``location``; a one-line ``DatasetError`` when it cannot be loaded."""
    ref = location.removeprefix("hf:")
    if not ref.strip():  # "hf:" alone would read the current folder
        raise DatasetError(f"dataset {location!r} names no dataset: write hf:PATH, hf:BUILDER:PATH or hf:owner/name")
    cache_dir = str(options["cache_dir"]) if options.get("cache_dir") else None
    builder, _, builder_path = ref.partition(":")
    try:
        if builder in HF_BUILDERS and builder_path:
            files = Path(builder_path).expanduser()
            if not files.exists():
                raise DatasetError(f"dataset {location!r}: {builder_path!r} does not exist")
            where = {"data_dir": str(files)} if files.is_dir() else {"data_files": str(files)}
            return datasets.load_dataset(builder, cache_dir=cache_dir, **where)
        local = Path(ref).expanduser()
        if _is_hf_folder(local):
            return datasets.load_from_disk(str(local))
        if local.is_dir():
            return datasets.load_dataset(str(local), cache_dir=cache_dir)
        if local.is_file():
            builder = HF_FILE_BUILDERS.get(local.suffix.lower())
            if builder is None:
                raise DatasetError(
                    f"dataset {location!r}: the hf source cannot tell how to read a {local.suffix or 'bare'} file; "
                    f"name a builder: hf:BUILDER:{ref} ({', '.join(HF_BUILDERS)})"
                )
            return datasets.load_dataset(builder, data_files=str(local), cache_dir=cache_dir)
        if not location.startswith("hf:"):
            raise DatasetError(f"dataset {location!r} does not exist")
        return datasets.load_dataset(ref, options.get("config"), revision=options.get("revision"), cache_dir=cache_dir)
    except DatasetError:
        raise
    except ConnectionError:
        if not datasets.config.HF_HUB_OFFLINE:
            raise DatasetError(f"Hugging Face dataset {ref!r} cannot be downloaded: the Hub is unreachable") from None
        cache = cache_dir or datasets.config.HF_DATASETS_CACHE
        raise DatasetError(f"Hugging Face dataset {ref!r} is not in the datasets cache {cache} (offline)") from None
    # the datasets library raises many kinds (offline, not found, no data files, a bad config); all mean "cannot load"
    except (OSError, ValueError, RuntimeError, datasets.exceptions.DatasetsError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DatasetError(f"Hugging Face dataset {location!r} cannot be loaded: {first}") from None


def _columns(datasets, table, location: str, options: Mapping[str, Any]) -> tuple[str, str | None]:
    columns = list(table.column_names)
    listed = ", ".join(columns) or "none"
    image_column = options.get("image_column") or next(
        (c for c in columns if isinstance(table.features[c], datasets.Image)), "image"
    )
    if image_column not in columns:
        raise DatasetError(f"dataset {location!r} has no image column {image_column!r}; its columns: {listed}")
    caption_column = options.get("caption_column")
    if caption_column == "none" and "none" not in columns:
        return image_column, None
    if caption_column and caption_column not in columns:
        raise DatasetError(f"dataset {location!r} has no caption column {caption_column!r}; its columns: {listed}")
    if not caption_column:
        caption_column = next((c for c in TEXT_COLUMNS if c in columns), None)
    return image_column, caption_column


def _rows(table, split: str, image_column: str, caption_column: str | None) -> Iterator[DatasetItem | Skipped]:
    for index, row in enumerate(table):
        source = f"{split}[{index}]"
        data, path = _image_bytes(row[image_column])
        if data is None:
            yield Skipped(source, str(path))
            continue
        try:
            image = open_image(data, source)
        except ImageError as e:
            yield Skipped(source, str(e).removeprefix(f"{source}: "))
            continue
        caption = _caption(row[caption_column]) if caption_column else None
        yield DatasetItem(image, caption, source, key=image_key(data), path=path if isinstance(path, Path) else None)


def _image_bytes(value: Any) -> tuple[bytes | None, Path | str | None]:
    """The image bytes of a cell, and its file when read from disk; ``(None, why)`` when there are none."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"], None
        value = value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value), None
    if isinstance(value, str) and value:
        try:
            return read_file(value), Path(value)
        except OSError as e:
            return None, f"its image file {one_line(repr(value))} cannot be read ({one_line(e.strerror or str(e))})"
    return None, "no image" if value is None else f"an image cell of type {type(value).__name__}"


def _caption(value: Any) -> str | None:
    if isinstance(value, list | tuple):  # several captions per image (COCO style): the first one
        value = next((v for v in value if isinstance(v, str) and v.strip()), None)
    if value is None:
        return None
    return str(value).strip() or None


@hookimpl
def register_dataset_sources(register):
    register(FolderSource())
    register(ZipSource())
    register(HfSource())
