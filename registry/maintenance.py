"""Keeping the store honest: verify re-hashes blobs and checks the index, gc sweeps what no version uses."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

from lorastack.faults import crash_point

from . import inplace
from .blobs import age_seconds
from .errors import CorruptIndexError, IntegrityError
from .records import GcReport, VerifyReport

DEFAULT_GRACE_SECONDS = 3600
#: SQLite's integrity check stops after this many problems; a handful is enough to tell the user.
INDEX_PROBLEMS = 10


def verify(registry, ref: str | None = None) -> VerifyReport:
    """Re-hash blobs (all, or one version's) and check the index: report missing, corrupt and extra blobs, stale
    temp files and a damaged index."""
    report = VerifyReport()
    db = registry._db()
    if db is None:
        stray = sorted(p.name for p in registry.blobs.all_blobs())
        if stray:  # blobs and no index: the index was lost, and every name, version and tag with it
            report.extra = stray
            report.index = [f"{registry.index_path} is missing, but blobs/ holds {len(stray)} file(s)"]
        return report
    if ref is None:
        problems = [r[0] for r in db.execute(f"PRAGMA integrity_check({INDEX_PROBLEMS})")]
        if problems != ["ok"]:
            report.index = [str(p) for p in problems]
        else:
            report.index = _damaged_records(registry, db)
    try:  # in-place files (lorastack scan) are re-hashed where they are; the rest are blobs
        records, placed = inplace.verify_records(db, registry.resolve(ref).files if ref is not None else None)
    except sqlite3.DatabaseError as e:  # the integrity check said why; keep reporting, not crashing
        report.index = report.index or [str(e)]
        return report
    for record in placed:
        report.checked += 1
        found = inplace.problem(record)
        if found is not None:
            (report.missing if found == "missing" else report.corrupt).append(record["sha256"])
    for sha256, size in records:
        report.checked += 1
        try:
            registry.blobs.check(sha256, size)
        except IntegrityError:
            (report.missing if not registry.blobs.path(sha256).exists() else report.corrupt).append(sha256)
    if ref is None:
        referenced = {sha for sha, _ in records}
        report.extra = sorted(p.name for p in registry.blobs.all_blobs() if p.name not in referenced)
        report.temp = sorted(p.name for p in registry.blobs.temp_files())
    return report


def _damaged_records(registry, db) -> list[str]:
    """Version records whose fields are not what lorastack wrote (SQLite's check cannot know)."""
    damaged = []
    for (version_id,) in db.execute("SELECT id FROM versions ORDER BY id").fetchall():
        try:
            registry._version(db, version_id)
        except CorruptIndexError as e:
            damaged.append(str(e))
            if len(damaged) >= INDEX_PROBLEMS:
                break
    return damaged


def gc(registry, dry_run: bool = False, grace: float = DEFAULT_GRACE_SECONDS) -> GcReport:
    """Delete blobs no version references and stale temp files, both older than ``grace`` seconds.

    Only reads the index, so it works on a full disk. Imports hold the blob lock shared from their first temp
    file to their commit, and gc holds it exclusively: it never sweeps an import in flight, whatever the grace.
    """
    report = GcReport(dry_run=dry_run)
    db = registry._db() if registry.index_path.exists() else None
    if db is None:
        return report
    with registry.blobs.lock(exclusive=True):
        referenced = {r[0] for r in db.execute("SELECT sha256 FROM files")}
        for blob in registry.blobs.all_blobs():
            if blob.name not in referenced and age_seconds(blob) >= grace:
                report.blobs.append(blob.name)
                report.freed += _size(blob)
                if not dry_run:
                    registry.blobs.remove(blob)
                    crash_point("registry.gc.unlinked")
        for temp in registry.blobs.temp_files():
            if age_seconds(temp) >= grace:
                report.temp.append(temp.name)
                report.freed += _size(temp)
                if not dry_run:
                    registry.blobs.remove(temp)
    return report


def _size(path: Path) -> int:
    """Bytes a file or folder holds; a symbolic link counts nothing (what it points at is not ours)."""
    st = path.lstat()
    if stat.S_ISDIR(st.st_mode):
        return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return st.st_size if stat.S_ISREG(st.st_mode) else 0
