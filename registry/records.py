"""What the registry index records: versions, their files, and the reports of verify and gc."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidValueError

#: Bounds on a version's details: the same on import and on pull (a manifest lorastack wrote must pull back).
MAX_TRIGGER_WORDS = 1000
MAX_WORD = 1000
MAX_BASE_MODEL = 1000
MAX_DESCRIPTION = 100_000


def _text_problem(value: str) -> str | None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "holds bytes that are not UTF-8 text"
    return None


def clean_text(value):
    """Text read from a file's header, with lone surrogates (undecodable bytes, invalid escapes) replaced."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8") if _text_problem(value) else value
    if isinstance(value, list):
        return [clean_text(v) for v in value]
    return value


def validate_details(
    trigger_words: list[str] | None = None,
    base_model: str | None = None,
    description: str | None = None,
    source: str | Path | None = None,
) -> None:
    """Refuse details lorastack could not store, show or push back: wrong types, over-long, not UTF-8.

    ``source`` is the file the details were read from (its header), named in the message.
    """
    where = f"{source}: its header's " if source is not None else ""
    hint = "; give your own with --trigger / --base-model / --description" if source is not None else ""
    if trigger_words is not None:
        if not isinstance(trigger_words, list | tuple) or len(trigger_words) > MAX_TRIGGER_WORDS:
            raise InvalidValueError(
                f"{where}trigger words: at most {MAX_TRIGGER_WORDS} are kept, got {len(trigger_words)}{hint}"
            )
        for word in trigger_words:
            if not isinstance(word, str) or len(word) > MAX_WORD or _text_problem(word):
                why = (
                    _text_problem(word)
                    if isinstance(word, str) and len(word) <= MAX_WORD
                    else f"must be text of at most {MAX_WORD} characters"
                )
                raise InvalidValueError(f"{where}trigger word {str(word)[:40]!r}… {why}{hint}")
    for label, value, limit in (
        ("base model", base_model, MAX_BASE_MODEL),
        ("description", description, MAX_DESCRIPTION),
    ):
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > limit:
            raise InvalidValueError(f"{where}{label} must be text of at most {limit} characters{hint}")
        problem = _text_problem(value)
        if problem:
            raise InvalidValueError(f"{where}{label} {problem}{hint}")


@dataclass
class FileRecord:
    path: str
    role: str
    size: int
    sha256: str
    tensor_sha256: str | None
    #: "blob" (under blobs/, by sha256) or "inplace" (a user's file at ``location_path``, see registry/inplace.py)
    location: str = "blob"
    location_path: str | None = None
    missing_since: float | None = None  # when a rescan last found an in-place file gone

    @property
    def missing(self) -> bool:
        return self.missing_since is not None


@dataclass
class Version:
    """One immutable version of an adapter, as the index records it."""

    name: str
    number: int
    created_at: float
    format: str | None
    family: str | None
    kind: str | None
    rank: int | None
    alpha: float | None
    trigger_words: list[str]
    base_model: str | None
    description: str | None
    provenance: dict[str, Any]
    metadata: dict[str, str]
    files: list[FileRecord] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.number}"

    @property
    def adapter_file(self) -> FileRecord:
        return next(f for f in self.files if f.role == "adapter")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.number,
            "ref": self.ref,
            "tags": self.tags,
            "created_at": self.created_at,
            "format": self.format,
            "family": self.family,
            "kind": self.kind,
            "rank": self.rank,
            "alpha": self.alpha,
            "trigger_words": self.trigger_words,
            "base_model": self.base_model,
            "description": self.description,
            "provenance": self.provenance,
            "files": [f.__dict__ for f in self.files],
            "metadata": self.metadata,
        }


@dataclass
class ImportResult:
    version: Version
    created: bool  # False when the same bytes and details were already this adapter's version


@dataclass
class VerifyReport:
    """What ``verify`` found. ``clean`` means nothing is lost or damaged: every listed version has its blob with
    the right bytes, and the index itself is sound. ``extra`` blobs and ``temp`` files are what an interrupted
    operation leaves behind; they harm nothing and ``gc`` sweeps them."""

    checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    temp: list[str] = field(default_factory=list)
    index: list[str] = field(default_factory=list)  # problems SQLite's integrity check found in index.sqlite

    @property
    def clean(self) -> bool:
        return not (self.missing or self.corrupt or self.index)

    @property
    def reclaimable(self) -> bool:
        return bool(self.extra or self.temp)


@dataclass
class GcReport:
    blobs: list[str] = field(default_factory=list)
    temp: list[str] = field(default_factory=list)
    freed: int = 0
    dry_run: bool = False


def version_from_row(row, files: list[FileRecord], tags: list[str]) -> Version:
    """A :class:`Version` from its index row, every field type-checked (``ValueError`` saying which is wrong)."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(what)

    def decoded(key: str, kind: type):
        try:
            value = json.loads(row[key])
        except (TypeError, ValueError, RecursionError):
            raise ValueError(f"{key} is not JSON") from None
        need(isinstance(value, kind), f"{key} is not a JSON {kind.__name__}")
        return value

    number, created = row["number"], row["created_at"]
    need(isinstance(number, int) and number >= 1, "its number is not a positive integer")
    need(
        isinstance(created, int | float) and math.isfinite(created) and 0 <= created < 1e11, "created_at is not a time"
    )
    for key in ("rank",):
        need(row[key] is None or isinstance(row[key], int), f"{key} is not an integer")
    need(
        row["alpha"] is None or (isinstance(row["alpha"], int | float) and math.isfinite(row["alpha"])),
        "alpha is not a number",
    )
    for key in ("format", "family", "kind", "base_model", "description"):
        need(row[key] is None or isinstance(row[key], str), f"{key} is not text")
    words = decoded("trigger_words", list)
    need(all(isinstance(w, str) for w in words), "trigger_words holds something other than text")
    metadata = decoded("metadata", dict)
    need(all(isinstance(v, str) for v in metadata.values()), "metadata holds something other than text")
    need(any(f.role == "adapter" for f in files), "it has no adapter file")
    for f in files:
        need(
            isinstance(f.size, int) and isinstance(f.sha256, str) and len(f.sha256) == 64, "a file record is not valid"
        )
    return Version(
        name=row["adapter_name"],
        number=number,
        created_at=float(created),
        format=row["format"],
        family=row["family"],
        kind=row["kind"],
        rank=row["rank"],
        alpha=row["alpha"],
        trigger_words=words,
        base_model=row["base_model"],
        description=row["description"],
        provenance=decoded("provenance", dict),
        metadata=metadata,
        files=files,
        tags=tags,
    )
