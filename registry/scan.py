"""``lorastack scan``: bring every adapter file under some folders into the registry, in place or copied.

In place (the default) a version's file record names the user's file and the (device, inode, size, mtime) it had
when hashed (registry/inplace.py). A rescan:

* skips a file whose path, device, inode, size and mtime are those recorded: nothing is read;
* reads a new or changed file once (:func:`lorastack.registry.inplace.read_once`: structure and every hash);
* finds a moved or renamed file again by its sha256 among the records whose file is gone (same version, new path);
* records a file changed under the same path as a new version of the same adapter (the old version's bytes are
  gone, so it is marked missing);
* marks a recorded file that is no longer under a scanned root as missing (kept, listed with ``--missing``).

Writes go in batches, one transaction each, in the order files are read; the last transaction marks the missing.
A scan killed at any point leaves every batch it committed and nothing half-written; run again, it skips what the
committed batches recorded and goes on.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lorastack.adapters.errors import AdapterError
from lorastack.faults import crash_point

from . import scan_records
from .db import transaction
from .errors import BusyError
from .folder import guarded
from .inplace import INPLACE, FileStat, ReadFile, read_once
from .scan_names import base_name, check_namespace, unique_name
from .scan_walk import Found, kind, walk

#: Files per transaction, and the most seconds one batch waits to commit (fsync per commit: batches keep a scan of
#: 30,000 files from costing 30,000 fsyncs; small enough that a killed scan loses little).
BATCH_FILES = 500
BATCH_SECONDS = 2.0
#: Files read ahead of the writer (threads; hashlib and file reads release the GIL): enough that reading goes on
#: while a batch commits and its sidecars are recorded. A read file is held as its structure (no tensor data).
READ_AHEAD = 1024
#: The file a scan holds locked (see :func:`_one_scan`).
SCAN_LOCK = "scan.lock"


def default_workers() -> int:
    return max(2, min(8, os.cpu_count() or 1))


@dataclass
class ScanReport:
    """What a scan did, file by file where something happened, counted where nothing did."""

    roots: list[str]
    added: list[dict] = field(default_factory=list)  # {"ref", "path"}: new adapters
    updated: list[dict] = field(default_factory=list)  # {"ref", "path"}: a new version of a file changed in place
    moved: list[dict] = field(default_factory=list)  # {"ref", "from", "to"}
    missing: list[dict] = field(default_factory=list)  # {"ref", "path"}: newly found gone
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}: not adapters
    errors: list[dict] = field(default_factory=list)  # {"path", "error"}: unreadable, broken links, loops
    sidecar_problems: list[dict] = field(default_factory=list)  # {"path", "reason"}: sidecars skipped
    unchanged: int = 0
    sidecars: int = 0
    hashed: int = 0  # files read and hashed in full
    bytes_hashed: int = 0
    seconds: float = 0.0
    sidecar_seconds: float = 0.0  # of ``seconds``, spent recording sidecars and previews
    copy: bool = False

    def as_dict(self) -> dict:
        counts = {k: len(getattr(self, k)) for k in ("added", "updated", "moved", "missing", "skipped", "errors")}
        return {**self.__dict__, "counts": {**counts, "unchanged": self.unchanged, "sidecars": self.sidecars}}


@guarded
def scan(registry, roots: Iterable[str | Path], **options) -> ScanReport:
    """Scan ``roots`` into ``registry`` (see :func:`_scan`); SQLite and file-system failures of the registry itself
    become one-line registry errors (a file that cannot be read is reported, never raised)."""
    with _one_scan(registry):
        return _scan(registry, roots, **options)


@contextlib.contextmanager
def _one_scan(registry):
    """One scan of a registry at a time: two at once would each find the same new file and add it twice (each
    decides from the index as it was when it started). Imports and edits go on meanwhile."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    registry.root.mkdir(parents=True, exist_ok=True)
    with open(registry.root / SCAN_LOCK, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(
                f"{registry.root}: another lorastack scan is running on this registry; run this one when it is done"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _scan(
    registry,
    roots: Iterable[str | Path],
    *,
    copy: bool = False,
    namespace: str | None = None,
    workers: int | None = None,
    on_read: Callable[[int], None] | None = None,
    on_total: Callable[[int, int], None] | None = None,
) -> ScanReport:
    """Scan ``roots`` into ``registry`` (see the module docstring). ``on_total(files, bytes)`` is told what will be
    read once the walk is done, ``on_read(bytes)`` after each file read (progress)."""
    started = time.perf_counter()
    namespace = check_namespace(namespace)
    roots = [Path(os.path.abspath(r)) for r in roots]
    report = ScanReport([str(r) for r in roots], copy=copy)
    registry._check_writable()
    db = registry._db(write=True)
    known = scan_records.load(db)
    found: list[Found] = []
    for root in roots:
        found.extend(walk(root, lambda p, why: report.errors.append({"path": str(p), "error": why})))
    seen = {str(f.path) for f in found}
    weights = [f for f in found if kind(f.path) == "weights"]
    stems = {(str(f.path.parent), f.path.name[: -len(f.path.suffix)].lower()) for f in weights}
    for f in found:
        _classify(f, stems, report)
    to_read = []
    for f in weights:
        record = known.by_path.get(str(f.path))
        if record is not None and record.missing_since is None and record.stat == FileStat.of(f.stat):
            report.unchanged += 1
        else:
            to_read.append(f)
    if on_total is not None:
        on_total(len(to_read), sum(f.stat.st_size for f in to_read))
    gone = known.gone(roots, seen)
    writer = _Writer(registry, db, known, gone, report, namespace, copy, seen)
    writer.sidecar_queue.extend(scan_records.pending_sidecars(db))  # those a killed scan left unrecorded
    with ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="lorastack-scan") as pool:
        for f, result in _read_all(pool, to_read):
            if isinstance(result, ReadFile):
                report.hashed += 1
                report.bytes_hashed += result.stat.size
            writer.add(f, result)
            if on_read is not None:
                on_read(result.stat.size if isinstance(result, ReadFile) else 0)
    writer.flush()
    if writer.sidecar_queue:  # pending ones of an earlier scan, on a rescan that read no file
        writer.apply_sidecars()
    with transaction(db):
        report.missing = scan_records.mark_missing(db, [g for g in gone if not g.moved], time.time())
        crash_point("registry.scan.missing.before-commit")
    report.seconds = time.perf_counter() - started
    return report


def _read_all(pool, files: list[Found]):
    """``(file, ReadFile or the error)`` in order, at most :data:`READ_AHEAD` files in flight."""

    def read(f: Found):
        try:
            return read_once(f.path)
        except (AdapterError, OSError) as e:
            return e

    pending = []
    for f in files:
        pending.append((f, pool.submit(read, f)))
        if len(pending) >= READ_AHEAD:
            done, future = pending.pop(0)
            yield done, future.result()
    for done, future in pending:
        yield done, future.result()


def _classify(f: Found, stems: set, report: ScanReport) -> None:
    """Count sidecars (a file beside an adapter whose name starts with the adapter's stem); list the rest."""
    what = kind(f.path)
    if what == "weights":
        return
    if what == "pickle":
        report.skipped.append({"path": str(f.path), "reason": (
            f"is a pickle file ({f.path.suffix.lower()}), which can run code when loaded; scan reads safetensors "
            "only: convert it, or import it with lorastack import --allow-pickle")})  # fmt: skip
        return
    name, parent = f.path.name.lower(), str(f.path.parent)
    parts = name.split(".")
    if what == "sidecar" and any((parent, ".".join(parts[:i])) in stems for i in range(1, len(parts))):
        report.sidecars += 1  # read by registry/sidecars.py (see _Writer.apply_sidecars)
        return
    report.skipped.append({"path": str(f.path), "reason": f"not an adapter file ({f.path.suffix or 'no suffix'})"})


class _Writer:
    """Decides what each read file is (new, moved, changed) and writes it, in batches of one transaction each."""

    def __init__(self, registry, db, known, gone, report: ScanReport, namespace: str | None, copy: bool, seen):
        self.registry, self.db, self.known, self.report, self.seen = registry, db, known, report, seen
        self.namespace, self.copy = namespace, copy
        self.gone_by_sha: dict[str, list] = {}
        for record in gone:
            self.gone_by_sha.setdefault(record.sha256, []).append(record)
        self.batch: list[tuple[Found, object]] = []
        self.sidecar_queue: list[tuple[str, Path, dict]] = []
        self.opened = time.perf_counter()

    def add(self, f: Found, result) -> None:
        if not self.batch:
            self.opened = time.perf_counter()
        self.batch.append((f, result))
        if len(self.batch) >= BATCH_FILES or time.perf_counter() - self.opened >= BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        batch, self.batch = self.batch, []
        if self.copy:
            for f, result in batch:
                self._copied(f, result)
        else:
            with transaction(self.db):
                for f, result in batch:
                    self._in_place(f, result)
                crash_point("registry.scan.batch.before-commit")
            crash_point("registry.scan.batch.after-commit")
        self.apply_sidecars()

    def _refused(self, f: Found, result) -> bool:
        if isinstance(result, ReadFile):
            return False
        if isinstance(result, AdapterError):
            self.report.skipped.append({"path": str(f.path), "reason": result.problem})
        else:
            self.report.errors.append({"path": str(f.path), "error": _os_reason(result)})
        return True

    def _in_place(self, f: Found, result) -> None:
        path, now, db = str(f.path), time.time(), self.db
        record = self.known.by_path.get(path)
        if self._refused(f, result):
            if record is not None and record.missing_since is None and isinstance(result, AdapterError):
                # the recorded bytes were replaced by something that is not an adapter: they are gone
                self.report.missing.extend(scan_records.mark_missing(db, [record], now))
            return
        if record is not None and record.missing_since is None and record.sha256 == result.sha256:
            scan_records.update_location(db, record, path, result.stat)  # touched, same bytes
            self.report.unchanged += 1
            return
        moved = self._take_gone(result.sha256)
        if moved is not None:
            if record is not None and record.missing_since is None and record is not moved:
                self.report.missing.extend(scan_records.mark_missing(db, [record], now))  # overwritten by the move
            old = moved.path
            scan_records.update_location(db, moved, path, result.stat)
            self.known.by_path[path] = moved
            self.report.moved.append({"ref": scan_records.ref_of(db, moved), "from": old, "to": path})
            return
        if record is not None:  # changed under the same path: a new version of the same adapter
            if record.missing_since is None:
                scan_records.mark_missing(db, [record], now)
            new = scan_records.add_version(self.registry, db, record.adapter_id, result, f.root, now)
            self.known.by_path[path] = new
            self.report.updated.append({"ref": new.ref, "path": path})
            self._sidecars(new.ref, f.path, result)
            return
        name = unique_name(base_name(f.path, f.root, self.namespace, result.sha256), self._taken)
        new = scan_records.add_adapter(self.registry, db, name, result, f.root, now)
        self.known.by_path[path] = new
        self.report.added.append({"ref": new.ref, "path": path})
        self._sidecars(new.ref, f.path, result)

    def _copied(self, f: Found, result) -> None:
        """``--copy``: store the file as a blob, as ``lorastack import`` does (a new adapter, or a new version of
        the adapter this path was copied into before)."""
        if self._refused(f, result):
            return
        path = str(f.path)
        record = self.known.by_path.get(path)
        if record is not None:
            name = scan_records.name_of(self.db, record.adapter_id)
        else:  # a name taken by this very file's copy (a scan killed before it noted the source) is this file's
            real = os.path.realpath(f.path)
            name = unique_name(
                base_name(f.path, f.root, self.namespace, result.sha256),
                lambda n: self._taken(n) and not scan_records.copied_from(self.db, n, real),
            )
        imported = self.registry.import_file(f.path, name, provenance={"scan_root": str(f.root)})
        with transaction(self.db):
            stored = scan_records.note_source(self.db, imported.version, path, result.stat)
            crash_point("registry.scan.copy.before-commit")
        self.known.by_path[path] = stored
        if not imported.created:
            self.report.unchanged += 1
        else:
            (self.report.updated if record is not None else self.report.added).append(
                {"ref": imported.version.ref, "path": path}
            )
            self._sidecars(imported.version.ref, f.path, result)

    def _take_gone(self, sha256: str):
        """A record of these bytes whose file is gone: under a scanned root and not found by the walk, missing
        already, or outside the roots and no longer there (a file moved in from a folder not scanned this time)."""
        candidates = self.gone_by_sha.get(sha256) or []
        while candidates:
            record = candidates.pop(0)
            if not record.moved:
                record.moved = True
                return record
        for record in self.known.by_sha().get(sha256, ()):
            if record.location == INPLACE and not record.moved and not os.path.lexists(record.path):
                record.moved = True
                return record
        return None

    def _taken(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM adapters WHERE name = ?", (name,)).fetchone() is not None

    def _sidecars(self, ref: str, path: Path, result: ReadFile) -> None:
        """Queue a new version's sidecars (NAME.json, NAME.civitai.info, NAME.metadata.json, previews) and the
        values of its header (lineage, training tags…), recorded by registry/sidecars.py once its batch is
        committed (the version must exist to hold them)."""
        self.sidecar_queue.append((ref, path, dict(result.adapter.metadata.raw)))

    def apply_sidecars(self) -> None:
        """Record the queued sidecars. Their own transactions, after the batch's: a scan killed in between keeps
        its versions marked ``sidecars_pending``, and the next scan records their sidecars (recording them twice
        changes nothing)."""
        queue, self.sidecar_queue = self.sidecar_queue, []
        started = time.perf_counter()
        try:
            from .sidecars import apply_sidecars_many, read_sidecars
        except ImportError:  # a build without sidecar support records the adapters alone
            return
        items = []
        for ref, path, header in queue:
            # the header as the one read of the file parsed it; the walk says which sidecars exist (no stat each)
            found = read_sidecars(path, header=header, present=self.seen if str(path) in self.seen else None)
            if found.values or found.header or found.previews or found.problems:
                items.append((ref, found))
        if items:  # the batch's values in one transaction: one commit for the batch, not one per file
            for applied in apply_sidecars_many(self.registry, items):
                self.report.sidecar_problems.extend(applied["problems"])
        crash_point("registry.scan.sidecars.before-done")
        if queue:
            with transaction(self.db):
                scan_records.sidecars_recorded(self.db, [ref for ref, _, _ in queue])
        self.report.sidecar_seconds += time.perf_counter() - started


def _os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    return f"cannot be read ({e.strerror or e})"
