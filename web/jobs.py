"""Jobs: long work (generation, training, imports, scans) run by one worker thread, recorded in SQLite.

Request handlers only queue a job and read records; the worker runs one job at a time, so the device has one queue.
A job's record (``jobs.sqlite`` in the server folder) is written when it is queued, started and finished; its
files (images, a run folder) live in ``jobs/<id>/``, each written atomically **before** the transaction that lists
them, so a kill at any point leaves either a finished job with all its files or an unfinished one. On start, jobs
a previous server left queued or running are marked ``interrupted``; finished records are never rewritten.

Progress (a fraction, a line, and kind-specific live values such as the loss curve) is kept in memory and pushed
to pages as server-sent events; it is also saved with the record every few seconds.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorastack.errors import LorastackError
from lorastack.faults import crash_point
from lorastack.registry.errors import NotFoundError

log = logging.getLogger("lorastack.web")

STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINISHED = ("done", "failed", "cancelled", "interrupted")
MAX_QUEUED = 100
SAVE_EVERY = 2.0  # seconds between progress saves
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, params TEXT NOT NULL,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL,
    progress REAL NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '', live TEXT NOT NULL DEFAULT '{}',
    result TEXT, error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
"""


class JobCancelled(LorastackError):
    """Raised inside a job (from its progress callback) when the user cancelled it (the worker catches it before
    other errors: a cancelled job is recorded as cancelled, not failed)."""


class Job:
    """What a running job's code gets: its parameters, its folder, and ways to report and to notice a cancel."""

    def __init__(self, store: JobStore, record: dict[str, Any]):
        self.store, self.id, self.kind, self.params = store, record["id"], record["kind"], record["params"]
        self.folder = store.folder / "jobs" / self.id
        self.cancel_requested = threading.Event()
        self.progress, self.message, self.live = 0.0, "", {}
        self._saved = 0.0

    def report(self, progress: float | None = None, message: str | None = None, **live: Any) -> None:
        """Update the job's progress (0…1), status line and live values; raises :class:`JobCancelled` if asked."""
        if progress is not None:
            self.progress = max(0.0, min(1.0, float(progress)))
        if message is not None:
            self.message = message
        self.live.update(live)
        self.store.changed(self.id)
        if time.monotonic() - self._saved > SAVE_EVERY:
            self._saved = time.monotonic()
            self.store.save_progress(self)
        self.check()

    def check(self) -> None:
        if self.cancel_requested.is_set():
            raise JobCancelled


class JobStore:
    """The job records of one server folder, and the worker thread that runs them."""

    def __init__(self, folder: str | Path, handlers: dict[str, Callable[[Job], dict[str, Any]]]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.handlers = handlers
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.folder / "jobs.sqlite"), isolation_level=None, check_same_thread=False,
                                   timeout=10)  # fmt: skip
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(SCHEMA)
        # a previous server's unfinished jobs: their worker is gone
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = 'interrupted', finished_at = ?, message = 'the server stopped before this "
                "job finished' WHERE state IN ('queued', 'running')",
                (time.time(),),
            )
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._running: Job | None = None
        self._versions: dict[str, int] = {}
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="lorastack-worker", daemon=True)
        self._thread.start()

    # --- records ---------------------------------------------------------------------------------------------
    def submit(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        if kind not in self.handlers:
            raise NotFoundError(f"no job kind {kind!r}; kinds: {', '.join(self.handlers)}")
        if self._queue.qsize() >= MAX_QUEUED:
            raise JobQueueFull(f"{MAX_QUEUED} jobs are waiting already; wait for some to finish")
        job_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(4)
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, kind, state, params, created_at) VALUES (?, ?, 'queued', ?, ?)",
                (job_id, kind, json.dumps(params, sort_keys=True), time.time()),
            )
        self._queue.put(job_id)
        return self.get(job_id)

    def get(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no job {job_id!r}")
        record = _record(row)
        running = self._running
        if running is not None and running.id == job_id and record["state"] == "running":
            record.update(progress=running.progress, message=running.message, live=dict(running.live))
        return record

    def list(self, limit: int = 50, kind: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM jobs" + (" WHERE kind = ?" if kind else "") + " ORDER BY created_at DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, ([kind] if kind else []) + [limit]).fetchall()
        return [self.get(r["id"]) if r["state"] == "running" else _record(r) for r in rows]

    def cancel(self, job_id: str) -> dict[str, Any]:
        record = self.get(job_id)
        if record["state"] == "queued":
            with self._lock:
                self._db.execute(
                    "UPDATE jobs SET state = 'cancelled', finished_at = ?, message = 'cancelled before it started' "
                    "WHERE id = ? AND state = 'queued'", (time.time(), job_id),
                )  # fmt: skip
            self.changed(job_id)
        elif record["state"] == "running" and self._running is not None and self._running.id == job_id:
            self._running.cancel_requested.set()
        return self.get(job_id)

    def save_progress(self, job: Job) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET progress = ?, message = ?, live = ? WHERE id = ? AND state = 'running'",
                (job.progress, job.message, json.dumps(job.live), job.id),
            )

    # --- change notices (server-sent events wait on them) ------------------------------------------------------
    def changed(self, job_id: str) -> None:
        with self._cond:
            self._versions[job_id] = self._versions.get(job_id, 0) + 1
            self._cond.notify_all()

    def version(self, job_id: str) -> int:
        return self._versions.get(job_id, 0)

    def wait_change(self, job_id: str, seen: int, timeout: float) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self._versions.get(job_id, 0) != seen, timeout=timeout)
            return self._versions.get(job_id, 0)

    # --- the worker --------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            with self._lock:
                row = self._db.execute("SELECT * FROM jobs WHERE id = ? AND state = 'queued'", (job_id,)).fetchone()
                if row is None:  # cancelled while queued
                    continue
                self._db.execute("UPDATE jobs SET state = 'running', started_at = ? WHERE id = ?",
                                 (time.time(), job_id))  # fmt: skip
            job = Job(self, _record(row))
            self._running = job
            self.changed(job_id)
            state, result, error = "done", None, None
            try:
                job.folder.mkdir(parents=True, exist_ok=True)
                result = self.handlers[job.kind](job)
                job.progress = 1.0
            except JobCancelled:
                state, error = "cancelled", "cancelled"
            except LorastackError as e:
                state, error = "failed", str(e).splitlines()[0] if str(e) else type(e).__name__
            except Exception as e:  # a bug: keep the server up, record it, log the traceback
                log.error("job %s failed:\n%s", job_id, traceback.format_exc())
                state, error = "failed", f"internal error ({type(e).__name__}: {str(e)[:300]})"
            crash_point("serve.job.before-commit")
            with self._lock:
                self._db.execute(
                    "UPDATE jobs SET state = ?, finished_at = ?, progress = ?, message = ?, live = ?, result = ?, "
                    "error = ? WHERE id = ?",
                    (state, time.time(), job.progress, job.message, json.dumps(job.live),
                     None if result is None else json.dumps(result), error, job_id),
                )  # fmt: skip
            crash_point("serve.job.after-commit")
            self._running = None
            self.changed(job_id)

    def close(self) -> None:
        self._queue.put(None)
        if self._running is not None:
            self._running.cancel_requested.set()
        self._thread.join(timeout=30)
        with self._lock:
            self._db.close()


class JobQueueFull(LorastackError):
    """Too many jobs are waiting."""


def _record(row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "kind": row["kind"],
        "state": row["state"],
        "params": json.loads(row["params"]),
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "progress": row["progress"],
        "message": row["message"],
        "live": json.loads(row["live"] or "{}"),
        "result": json.loads(row["result"]) if row["result"] else None,
        "error": row["error"],
    }
