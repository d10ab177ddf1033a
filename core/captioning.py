"""Captioning a dataset with a captioner plugin and writing the captions next to the images or into one file.

``caption_dataset(open_dataset("photos/"), "blip", {"prefix": "a photo of aawxbc"})`` runs the captioner on the
images that have no caption yet and writes ``IMAGE.txt`` sidecars (or one ``metadata.csv``/``metadata.jsonl`` with
``file_name`` and ``text`` columns, the layout the ``folder`` source and Hugging Face ``imagefolder`` read). An
existing caption is never replaced unless ``overwrite=True``. Every file is written atomically; sidecars are written
as their captions arrive (a metadata file at the end, or when the run stops), so an interrupted run keeps what it had
done and a rerun captions only the rest.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import posixpath
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import CAPTION_SUFFIXES, Dataset, jsonl_rows
from .errors import LorastackError
from .interfaces import Captioner, DatasetItem, optional_member, resolve_options

OUTPUT_FORMATS = ("sidecar", "csv", "jsonl")
METADATA_FILES = {"csv": "metadata.csv", "jsonl": "metadata.jsonl"}
TEXT_COLUMNS = ("text", "caption")


class CaptionError(LorastackError):
    """Captions that cannot be made or written: a model that does not load, nowhere to write, a misbehaving plugin."""


@dataclass
class CaptionReport:
    """What ``caption_dataset`` did.

    :param written: captions written (new, or replaced with ``overwrite``)
    :param kept: images that already had a caption, left as they were
    :param skipped: images the captioner had no caption for
    :param unreadable: files the dataset source could not use
    :param outputs: the files written (sidecars, or the one metadata file)
    """

    captioner: str
    output: str
    written: int = 0
    kept: int = 0
    skipped: int = 0
    unreadable: int = 0
    outputs: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        where = "sidecar files" if self.output == "sidecar" else ", ".join(map(str, self.outputs)) or "nothing"
        text = (
            f"{self.captioner}: wrote {self.written} caption{'s' * (self.written != 1)}"
            f"{' to ' + where if self.written else ''}; kept {self.kept} existing; "
            f"{self.skipped} without caption"
        )
        if self.unreadable:
            text += f"; {self.unreadable} unreadable file{'s' * (self.unreadable != 1)} skipped"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "captioner": self.captioner, "output": self.output, "written": self.written, "kept": self.kept,
            "skipped": self.skipped, "unreadable": self.unreadable, "outputs": [str(p) for p in self.outputs],
        }  # fmt: skip


def resolve_captioner(name: str, options: Mapping[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """The captioner registered as ``name`` and its checked options; loads no model, reads no image."""
    from lorastack.plugins.manager import get_captioner

    captioner = get_captioner(name)
    return captioner, resolve_options(captioner.options, dict(options or {}), f"captioner {name!r}")


def caption_dataset(
    dataset_or_items: Dataset | Iterable[DatasetItem],
    captioner_name: str,
    options: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
    output: str = "sidecar",
    output_file: str | Path | None = None,
    progress: bool = True,
) -> CaptionReport:
    """Caption the items that have no caption (all of them with ``overwrite``) and write the captions.

    :param dataset_or_items: a ``Dataset`` from ``open_dataset``, or ``DatasetItem`` objects
    :param output: ``sidecar`` (``IMAGE.txt`` next to each image file, or the ``.caption`` file it already has),
        ``csv`` or ``jsonl`` (one metadata file, rows ``file_name``, ``text``; other rows and columns are kept)
    :param output_file: the csv/jsonl file; default ``metadata.csv``/``.jsonl`` in the dataset folder. Required for
        items with no file on disk (from a zip or a Hugging Face dataset), whose ``file_name`` is their ``source``
    :param progress: show a progress bar on stderr (only when it is a terminal)

    Items whose caption is written get it in ``item.caption`` too.
    """
    if output not in OUTPUT_FORMATS:
        raise CaptionError(f"caption output {output!r} is not one of: {', '.join(OUTPUT_FORMATS)}")
    if output == "sidecar" and output_file is not None:
        raise CaptionError("an output file is for the csv and jsonl formats; sidecars go next to each image")
    captioner, resolved = resolve_captioner(captioner_name, options)
    if isinstance(dataset_or_items, Dataset):
        items, label = list(dataset_or_items.items), dataset_or_items.location
        folder = Path(label).expanduser() if Path(label).expanduser().is_dir() else None
        unreadable = len(dataset_or_items.skipped)
    else:
        items, label, folder, unreadable = list(dataset_or_items), "the dataset", None, 0
    report = CaptionReport(captioner_name, output, unreadable=unreadable)

    # Every target and existing caption is worked out before the captioner runs: errors come before any model loads.
    if output == "sidecar":
        writer: _SidecarWriter | _MetadataWriter = _SidecarWriter(items, label)
    else:
        writer = _MetadataWriter(items, label, output, folder, output_file)
    existing = [_text(item.caption) or writer.existing(i) for i, item in enumerate(items)]
    if overwrite and output == "sidecar":
        writer.check_not_shadowed()
    wanted = [overwrite or not text for text in existing]
    # A captioner that reads existing captions (sidecar) sees every item; others only the ones to caption.
    reads_captions = bool(optional_member(captioner, Captioner, "reads_captions"))
    todo = [i for i in range(len(items)) if wanted[i] or reads_captions]
    report.kept = len(items) - len(todo)

    try:
        if todo:
            _run(captioner, captioner_name, resolved, items, todo, wanted, existing, writer, report, progress)
    except BaseException:
        # keep the captions made so far (Ctrl-C, a failing image), as the sidecars written on the way are kept
        if report.written and isinstance(writer, _MetadataWriter):
            with contextlib.suppress(Exception):
                writer.finish(existing)
        raise
    written = writer.finish(existing)
    if written is not None:
        report.outputs.append(written)
    return report


_END = object()


def _run(captioner, name, options, items, todo, wanted, existing, writer, report, progress) -> None:
    """Ask the captioner for the ``todo`` items' captions and write those that are wanted and new."""
    captions = iter(captioner.caption([items[i] for i in todo], options))
    with _progress_bar(len(todo), name, progress) as bar:
        for number, i in enumerate(todo):
            text = next(captions, _END)
            if text is _END:
                raise CaptionError(f"captioner {name!r} gave {number} captions for {len(todo)} images")
            if text is not None and not isinstance(text, str):
                raise CaptionError(
                    f"captioner {name!r} gave a {type(text).__name__} for {items[i].source}, not a string"
                )
            text = _text(text)
            if not wanted[i] or text == existing[i]:
                report.kept += 1
            elif not text:
                report.skipped += 1
            else:
                path = writer.write(i, text)
                items[i].caption = text
                report.written += 1
                if path is not None:
                    report.outputs.append(path)
            bar.update(1)
    if next(captions, _END) is not _END:
        raise CaptionError(f"captioner {name!r} gave more captions than the {len(todo)} images")


def _text(caption: Any) -> str:
    return caption.strip() if isinstance(caption, str) else ""


def _progress_bar(total: int, name: str, enabled: bool):
    from tqdm import tqdm

    # a bar in a log file or a test's captured output is noise: only on a terminal
    show = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(total=total, desc=f"captioning ({name})", unit="image", disable=not show, file=sys.stderr)


def _atomic_write_text(path: Path, text: str) -> None:
    from lorastack.adapters.outputs import atomic_write_bytes

    try:
        atomic_write_bytes(path, text.encode("utf-8"))
    except OSError as e:
        raise CaptionError(f"cannot write {path}: {e.strerror or e}") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CaptionError(f"cannot read the existing caption file {path} ({e})") from None


class _SidecarWriter:
    """A sidecar next to each image: the one it already has (``.txt``, else ``.caption``), or a new ``.txt``."""

    def __init__(self, items: Sequence[DatasetItem], label: str):
        no_file = [item.source for item in items if item.path is None]
        if no_file:
            raise CaptionError(
                f"{len(no_file)} images of {label} have no file on disk to put a sidecar next to (e.g. "
                f"{no_file[0]}); write their captions to one file with --layout csv or jsonl and --output FILE"
            )
        self.items = items
        self.targets: list[Path] = []
        for item in items:
            candidates = [item.path.with_suffix(suffix) for suffix in CAPTION_SUFFIXES]
            self.targets.append(next((p for p in candidates if p.is_file()), candidates[0]))
        self.on_disk = [_read_text(p) if p.is_file() else "" for p in self.targets]

    def existing(self, i: int) -> str:
        return self.on_disk[i]

    def check_not_shadowed(self) -> None:
        # A caption that differs from its sidecar came from a metadata file, which sources read before sidecars:
        # a new sidecar would never be seen.
        shadowed = [
            item.source for item, on_disk in zip(self.items, self.on_disk) if _text(item.caption) not in ("", on_disk)
        ]
        if shadowed:
            raise CaptionError(
                f"{len(shadowed)} images (e.g. {shadowed[0]}) get their caption from a metadata file, which is read "
                "before sidecars; to overwrite those captions write them with --layout csv or jsonl"
            )

    def write(self, i: int, text: str) -> Path:
        _atomic_write_text(self.targets[i], text + "\n")
        self.on_disk[i] = text
        return self.targets[i]

    def finish(self, existing: Sequence[str]) -> None:
        return None


class _MetadataWriter:
    """One ``metadata.csv``/``metadata.jsonl``: its rows are read first, updated in memory, written once at the end."""

    def __init__(
        self, items: Sequence[DatasetItem], label: str, fmt: str, folder: Path | None, output_file: str | Path | None
    ):
        self.fmt = fmt
        self.items = items
        if output_file is None:
            if folder is None:
                folder = _common_folder(items)
            if folder is None:
                raise CaptionError(
                    f"the images of {label} are not files in a folder; name the {fmt} file to write with --output FILE"
                )
            other = folder / METADATA_FILES["jsonl" if fmt == "csv" else "csv"]
            if other.is_file():
                raise CaptionError(
                    f"{folder} already has {other.name}; write to it with --layout {other.suffix[1:]}, or remove it"
                )
            output_file = folder / METADATA_FILES[fmt]
        self.path = Path(output_file).expanduser()
        if self.path.is_dir():
            raise CaptionError(f"{self.path} is a folder; give the {fmt} file to write")
        if not self.path.parent.is_dir():
            raise CaptionError(f"cannot write {self.path}: its folder does not exist")
        self.names = [self._file_name(item) for item in items]
        self.columns, self.rows = self._read()
        self.text_column = next((c for c in TEXT_COLUMNS if c in self.columns), "text")
        self.index = {_normal(str(row.get("file_name", ""))): row for row in self.rows}
        self.changed = False

    def _file_name(self, item: DatasetItem) -> str:
        if item.path is None:
            return item.source.replace("\\", "/")
        base = self.path.parent.resolve()
        relative = Path(os.path.relpath(Path(item.path).resolve(), base)).as_posix()
        if relative.startswith("../"):
            raise CaptionError(f"{item.path} is not inside {base}, the folder of {self.path.name}")
        return relative

    def _read(self) -> tuple[list[str], list[dict[str, Any]]]:
        if not self.path.is_file():
            return ["file_name", "text"], []
        text = _read_text(self.path)
        rows: list[dict[str, Any]] = []
        if self.fmt == "csv":
            reader = csv.DictReader(io.StringIO(text))
            columns = list(reader.fieldnames or [])
            if columns and "file_name" not in columns:
                raise CaptionError(f"{self.path} has no file_name column; not overwriting it")
            rows = [dict(row) for row in reader]
            return columns or ["file_name", "text"], rows
        columns = ["file_name"]
        try:
            parsed = jsonl_rows(text)
        except ValueError as e:
            raise CaptionError(f"{self.path} {e}; not overwriting it") from None
        for _, row in parsed:
            rows.append(row)
            columns += [key for key in row if key not in columns]
        return columns, rows

    def existing(self, i: int) -> str:
        row = self.index.get(_normal(self.names[i]))
        return _text(row.get(self.text_column)) if row else ""

    def write(self, i: int, text: str) -> None:
        self._set(i, text)
        return None

    def _set(self, i: int, text: str) -> None:
        key = _normal(self.names[i])
        row = self.index.get(key)
        if row is None:
            row = {"file_name": self.names[i]}
            self.rows.append(row)
            self.index[key] = row
        row[self.text_column] = text
        self.changed = True

    def finish(self, existing: Sequence[str]) -> Path | None:
        # Captions the images already had (from sidecars) go in too, so the file describes the whole dataset.
        for i, text in enumerate(existing):
            if text and not self.existing(i):
                self._set(i, text)
        if not self.changed:
            return None
        if self.text_column not in self.columns:
            self.columns.append(self.text_column)
        if self.fmt == "csv":
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
            data = buffer.getvalue()
        else:
            data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in self.rows)
        _atomic_write_text(self.path, data)
        return self.path


def _normal(name: str) -> str:
    return posixpath.normpath(name.strip().replace("\\", "/"))


def _common_folder(items: Sequence[DatasetItem]) -> Path | None:
    paths = [Path(item.path).resolve() for item in items if item.path is not None]
    if not paths or len(paths) != len(items):
        return None
    return Path(os.path.commonpath([p.parent for p in paths]))
