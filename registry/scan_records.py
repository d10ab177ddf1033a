"""The index rows a scan reads and writes: in-place file records, and the adapters and versions they belong to.

Every function here runs inside the caller's transaction (registry/scan.py batches them); none commits.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidValueError
from .inplace import INPLACE, FileStat, ReadFile
from .records import clean_text, validate_details

ADAPTER_FILE = "adapter.safetensors"


@dataclass
class Record:
    """One recorded adapter file (in place, or a blob with the path it was copied from)."""

    rowid: int
    version_id: int
    adapter_id: int
    path: str
    stat: FileStat | None
    sha256: str
    missing_since: float | None
    location: str
    moved: bool = False  # matched to a file found at another path in this scan
    ref: str | None = None


class Known:
    """The records a scan starts from, by path (an in-place file changed in place has one current record, and
    the records of its older versions, marked missing)."""

    def __init__(self, records: list[Record]):
        self.records = records
        self.by_path: dict[str, Record] = {}
        self._by_sha: dict[str, list[Record]] | None = None
        for r in sorted(records, key=lambda r: (r.missing_since is None, r.version_id)):
            self.by_path[r.path] = r  # the current record wins over missing ones

    def by_sha(self) -> dict[str, list[Record]]:
        """The records by sha256 (built on first use: only a file that is neither known nor moved needs it)."""
        if self._by_sha is None:
            self._by_sha = {}
            for r in self.records:
                self._by_sha.setdefault(r.sha256, []).append(r)
        return self._by_sha

    def gone(self, roots: list[Path], seen: set[str]) -> list[Record]:
        """In-place records a moved file may be: those under ``roots`` whose path the walk did not find, and those
        already missing anywhere. Records under the roots that are not missing yet are marked so unless moved."""
        prefixes = tuple(str(r).rstrip(os.sep) + os.sep for r in roots)
        return [
            r
            for r in self.records
            if r.location == INPLACE
            and r.path not in seen
            and (r.missing_since is not None or r.path.startswith(prefixes) or r.path in map(str, roots))
        ]


def load(db) -> Known:
    rows = db.execute(
        "SELECT f.rowid, f.version_id, v.adapter_id, f.location_path, f.st_dev, f.st_ino, f.size, f.mtime_ns, "
        "f.sha256, f.missing_since, f.location FROM files f JOIN versions v ON v.id = f.version_id "
        "WHERE f.role = 'adapter' AND f.location_path IS NOT NULL"
    )
    return Known([
        Record(r[0], r[1], r[2], r[3], FileStat(r[4], r[5], r[6], r[7]) if r[4] is not None else None, r[8], r[9],
               r[10])
        for r in rows
    ])  # fmt: skip


def update_location(db, record: Record, path: str, stat: FileStat) -> None:
    db.execute(
        "UPDATE files SET location_path = ?, st_dev = ?, st_ino = ?, mtime_ns = ?, missing_since = NULL "
        "WHERE rowid = ?",
        (path, stat.dev, stat.ino, stat.mtime_ns, record.rowid),
    )
    record.path, record.stat, record.missing_since = path, stat, None


def mark_missing(db, records: list[Record], now: float) -> list[dict]:
    """Mark records missing (those not already so); ``{"ref", "path"}`` of each."""
    marked = []
    for record in records:
        if record.missing_since is not None or record.location != INPLACE:
            continue
        db.execute("UPDATE files SET missing_since = ? WHERE rowid = ?", (now, record.rowid))
        record.missing_since = now
        marked.append({"ref": ref_of(db, record), "path": record.path})
    return marked


def ref_of(db, record: Record) -> str:
    if record.ref is None:
        name, number = db.execute(
            "SELECT a.name, v.number FROM versions v JOIN adapters a ON a.id = v.adapter_id WHERE v.id = ?",
            (record.version_id,),
        ).fetchone()
        record.ref = f"{name}@{number}"
    return record.ref


def name_of(db, adapter_id: int) -> str:
    return db.execute("SELECT name FROM adapters WHERE id = ?", (adapter_id,)).fetchone()[0]


def add_adapter(registry, db, name: str, read: ReadFile, root: Path, now: float) -> Record:
    adapter_id = db.execute("INSERT INTO adapters (name, created_at) VALUES (?, ?)", (name, now)).lastrowid
    return add_version(registry, db, adapter_id, read, root, now)


def add_version(registry, db, adapter_id: int, read: ReadFile, root: Path, now: float) -> Record:
    """A new version of ``adapter_id`` whose file is ``read.path``, in place (tagged ``latest`` unless pinned)."""
    name = name_of(db, adapter_id)
    adapter, meta = read.adapter, read.adapter.metadata
    details = [clean_text(meta.trigger_words), clean_text(meta.base_model), clean_text(meta.description)]
    try:
        validate_details(*details, source=read.path)
    except InvalidValueError:  # a header's odd details never keep a file out; the user can give their own
        details = [[], None, None]
    provenance = {"file": str(read.path), "scan_root": str(root), "scanned_at": now}
    number = registry._new_number(db, adapter_id, name, None)
    version_id = db.execute(
        "INSERT INTO versions (adapter_id, number, created_at, format, family, kind, rank, alpha, trigger_words, "
        "base_model, description, provenance, metadata, sidecars_pending) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,1)",
        (adapter_id, number, now, adapter.source_format, adapter.family, "+".join(adapter.kinds()), adapter.rank,
         adapter.alpha, json.dumps(details[0]), details[1], details[2], json.dumps(provenance, sort_keys=True),
         json.dumps(meta.raw, sort_keys=True)),
    ).lastrowid  # fmt: skip
    st = read.stat
    rowid = db.execute(
        "INSERT INTO files (version_id, path, role, size, sha256, tensor_sha256, location, location_path, st_dev, "
        "st_ino, mtime_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (version_id, ADAPTER_FILE, "adapter", st.size, read.sha256, read.tensor_sha256, INPLACE, str(read.path),
         st.dev, st.ino, st.mtime_ns),
    ).lastrowid  # fmt: skip
    registry._follow_newest(db, adapter_id)
    return Record(rowid, version_id, adapter_id, str(read.path), st, read.sha256, None, INPLACE,
                  ref=f"{name}@{number}")  # fmt: skip


def note_source(db, version, path: str, stat: FileStat) -> Record:
    """``--copy``: remember the path and stat a blob was copied from, so a rescan skips the unchanged source."""
    row = db.execute(
        "SELECT f.rowid, f.version_id, v.adapter_id, f.sha256 FROM files f JOIN versions v ON v.id = f.version_id "
        "JOIN adapters a ON a.id = v.adapter_id WHERE a.name = ? AND v.number = ? AND f.role = 'adapter'",
        (version.name, version.number),
    ).fetchone()
    db.execute(
        "UPDATE files SET location_path = ?, st_dev = ?, st_ino = ?, mtime_ns = ? WHERE rowid = ?",
        (path, stat.dev, stat.ino, stat.mtime_ns, row[0]),
    )
    db.execute("UPDATE versions SET sidecars_pending = 1 WHERE id = ?", (row[1],))
    return Record(row[0], row[1], row[2], path, stat, row[3], None, "blob", ref=version.ref)


def copied_from(db, name: str, path: str) -> bool:
    """Whether a version of ``name`` was imported from the file ``path`` (its provenance says so)."""
    row = db.execute(
        "SELECT 1 FROM versions v JOIN adapters a ON a.id = v.adapter_id WHERE a.name = ? "
        "AND json_extract(v.provenance, '$.file') = ? LIMIT 1",
        (name, path),
    ).fetchone()
    return row is not None


def pending_sidecars(db) -> list[tuple[str, Path, dict]]:
    """``(ref, path, header metadata)`` of the versions whose sidecars a scan added them without recording (it was
    killed in between), whose file is still where it was found."""
    rows = db.execute(
        "SELECT a.name, v.number, f.location_path, v.metadata FROM versions v "
        "JOIN adapters a ON a.id = v.adapter_id JOIN files f ON f.version_id = v.id AND f.role = 'adapter' "
        "WHERE v.sidecars_pending != 0 AND f.location_path IS NOT NULL AND f.missing_since IS NULL"
    )
    out = []
    for name, number, path, raw in rows:
        try:
            header = json.loads(raw) if raw else {}
        except (TypeError, ValueError, RecursionError):
            header = {}
        out.append((f"{name}@{number}", Path(path), header if isinstance(header, dict) else {}))
    return out


def sidecars_recorded(db, refs: list[str]) -> None:
    """Clear the pending mark of these versions (their sidecars are stored)."""
    for ref in refs:
        name, _, number = ref.rpartition("@")
        db.execute(
            "UPDATE versions SET sidecars_pending = 0 WHERE number = ? AND adapter_id = "
            "(SELECT id FROM adapters WHERE name = ?)",
            (int(number), name),
        )
