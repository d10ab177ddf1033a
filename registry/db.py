"""The SQLite index: the single source of truth for adapters, versions, files and tags.

WAL mode, one ``BEGIN IMMEDIATE`` transaction per change, a generous busy timeout so concurrent processes queue
instead of failing. The schema moves forward through the append-only :data:`MIGRATIONS` list, recorded in
``PRAGMA user_version``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from .errors import ReadOnlyError, RegistryError

BUSY_TIMEOUT_MS = 120_000

MIGRATIONS = [
    """
    CREATE TABLE adapters (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        created_at REAL NOT NULL,
        latest_pinned INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE versions (
        id INTEGER PRIMARY KEY,
        adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        created_at REAL NOT NULL,
        format TEXT,
        family TEXT,
        kind TEXT,
        rank INTEGER,
        alpha REAL,
        trigger_words TEXT NOT NULL DEFAULT '[]',
        base_model TEXT,
        description TEXT,
        provenance TEXT NOT NULL DEFAULT '{}',
        metadata TEXT NOT NULL DEFAULT '{}',
        UNIQUE (adapter_id, number)
    );
    CREATE TABLE files (
        version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        role TEXT NOT NULL DEFAULT 'adapter',
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        tensor_sha256 TEXT,
        PRIMARY KEY (version_id, path)
    );
    CREATE INDEX files_by_sha256 ON files (sha256);
    CREATE TABLE tags (
        adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
        tag TEXT NOT NULL COLLATE NOCASE,
        version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
        PRIMARY KEY (adapter_id, tag)
    );
    CREATE INDEX tags_by_version ON tags (version_id);
    CREATE INDEX versions_by_family ON versions (family);
    """,
]


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """Open (and migrate) the index. ``readonly`` opens an existing file without writing anything."""
    try:
        if readonly:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
            )
        else:
            conn = sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        if not readonly:
            # WAL is a property of the file: switch once. The switch itself can fail with "database is locked"
            # without waiting for the busy timeout, which is why callers open the index under the registry lock.
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            _migrate(conn)
        return conn
    except sqlite3.OperationalError as e:
        if "readonly" in str(e) or "read-only" in str(e) or "unable to open" in str(e):
            raise ReadOnlyError(f"{path}: the registry index cannot be written ({e})") from None
        raise RegistryError(f"{path}: cannot open the registry index: {e}") from None


def _migrate(conn: sqlite3.Connection) -> None:
    (current,) = conn.execute("PRAGMA user_version").fetchone()
    if current >= len(MIGRATIONS):
        return
    with transaction(conn):
        (current,) = conn.execute("PRAGMA user_version").fetchone()  # another process may have migrated
        for number in range(current, len(MIGRATIONS)):
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (``BEGIN IMMEDIATE``: writers queue here, not at commit)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
