"""What the registry index records: versions, their files, and the reports of verify and gc."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FileRecord:
    path: str
    role: str
    size: int
    sha256: str
    tensor_sha256: str | None


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
