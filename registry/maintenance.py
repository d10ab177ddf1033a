"""Keeping the store honest: verify re-hashes blobs, gc sweeps what no version uses."""

from __future__ import annotations

import shutil

from .blobs import age_seconds
from .errors import IntegrityError
from .records import GcReport, VerifyReport

DEFAULT_GRACE_SECONDS = 3600


def verify(registry, ref: str | None = None) -> VerifyReport:
    """Re-hash blobs (all, or one version's): report missing, corrupt and extra blobs and stale temp files."""
    report = VerifyReport()
    db = registry._db()
    if db is None:
        return report
    if ref is not None:
        records = [(f.sha256, f.size) for f in registry.resolve(ref).files]
    else:
        records = [(r[0], r[1]) for r in db.execute("SELECT DISTINCT sha256, size FROM files")]
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


def gc(registry, dry_run: bool = False, grace: float = DEFAULT_GRACE_SECONDS) -> GcReport:
    """Delete blobs no version references and stale temp files, both older than ``grace`` seconds."""
    report = GcReport(dry_run=dry_run)
    db = registry._db(write=not dry_run) if registry.index_path.exists() else None
    if db is None:
        return report
    with registry.blobs.lock(exclusive=True):
        referenced = {r[0] for r in db.execute("SELECT sha256 FROM files")}
        for blob in registry.blobs.all_blobs():
            if blob.name not in referenced and age_seconds(blob) >= grace:
                report.blobs.append(blob.name)
                report.freed += blob.stat().st_size
                if not dry_run:
                    blob.unlink()
        for temp in registry.blobs.temp_files():
            if age_seconds(temp) >= grace:
                report.temp.append(temp.name)
                report.freed += temp.stat().st_size
                if not dry_run:
                    temp.unlink()
        if not dry_run and registry.blobs.tmp.exists():
            for leftover in registry.blobs.tmp.iterdir():  # scratch folders of interrupted pickle imports
                if leftover.is_dir() and age_seconds(leftover) >= grace:
                    shutil.rmtree(leftover, ignore_errors=True)
    return report
