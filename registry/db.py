"""The SQLite index: the single source of truth for adapters, versions, files and tags.

WAL mode, one ``BEGIN IMMEDIATE`` transaction per change, a generous busy timeout so concurrent processes queue
instead of failing. The schema moves forward through the append-only :data:`MIGRATIONS` list, recorded in
``PRAGMA user_version``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from .errors import BusyError, CorruptIndexError, NoSpaceError, ReadOnlyError, RegistryError

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
    # Version numbers are never reused: recipes, Hub tags vN and provenance name versions by number, so a removed
    # version's number is retired with its adapter's name (which may be imported again later).
    """
    CREATE TABLE retired_versions (
        name TEXT NOT NULL COLLATE NOCASE,
        number INTEGER NOT NULL,
        PRIMARY KEY (name, number)
    );
    """,
    # Files kept in place (lorastack scan): location 'inplace' names a user's file (location_path, absolute) instead
    # of a blob, with the (device, inode, size, mtime) it had when hashed, so a rescan re-reads only changed files;
    # missing_since is set when a rescan finds it gone (the version is kept, and listed as missing).
    """
    ALTER TABLE files ADD COLUMN location TEXT NOT NULL DEFAULT 'blob';
    ALTER TABLE files ADD COLUMN location_path TEXT;
    ALTER TABLE files ADD COLUMN st_dev INTEGER;
    ALTER TABLE files ADD COLUMN st_ino INTEGER;
    ALTER TABLE files ADD COLUMN mtime_ns INTEGER;
    ALTER TABLE files ADD COLUMN missing_since REAL;
    CREATE INDEX files_by_location ON files (location_path) WHERE location_path IS NOT NULL;
    """,
    # Metadata per version (registry/metadata.py): one value per field, JSON, with the source it came from (header,
    # sidecar, user, civitai, hub) and its text flattened for list filters. Previews are files of the version (role
    # 'preview' / 'thumbnail', so verify, gc and rm treat them as any blob); this table says where each came from.
    """
    CREATE TABLE version_meta (
        version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
        field TEXT NOT NULL,
        value TEXT NOT NULL,
        source TEXT NOT NULL,
        search_text TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL,
        PRIMARY KEY (version_id, field)
    );
    CREATE INDEX version_meta_by_field ON version_meta (field, search_text);
    CREATE TABLE previews (
        version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
        sha256 TEXT NOT NULL,
        thumbnail_sha256 TEXT NOT NULL,
        media_type TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        source TEXT NOT NULL,
        url TEXT,
        position INTEGER NOT NULL,
        PRIMARY KEY (version_id, sha256)
    );
    CREATE INDEX previews_by_sha256 ON previews (sha256);
    """,
    # Named stacks (registry/stacks.py): adapters at scales, with prompt text, saved under a name. Each adapter is
    # kept as the immutable version it resolved to when saved (adapter_name, number) and the reference the user
    # gave (a tag may move later; the stack keeps what it was saved with). No foreign key to versions: removing a
    # version must not silently shrink a stack; using the stack then names the missing version. Also the tensor
    # hash index that lookups by A1111's short hash (registry/by_hash.py) read.
    """
    CREATE TABLE stacks (
        name TEXT NOT NULL PRIMARY KEY COLLATE NOCASE,
        prompt TEXT NOT NULL DEFAULT '',
        negative_prompt TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE stack_adapters (
        stack_name TEXT NOT NULL REFERENCES stacks(name) ON DELETE CASCADE ON UPDATE CASCADE,
        position INTEGER NOT NULL,
        load_name TEXT NOT NULL,
        adapter_name TEXT NOT NULL COLLATE NOCASE,
        number INTEGER NOT NULL,
        given TEXT NOT NULL,
        tag TEXT,
        scale TEXT NOT NULL,
        PRIMARY KEY (stack_name, position)
    );
    CREATE INDEX files_by_tensor_sha256 ON files (tensor_sha256);
    """,
    # A version whose sidecars are still to be recorded: a scan sets it in the transaction that adds the version
    # and clears it once the sidecars (and header values) are stored, so a scan killed in between records them on
    # its next run instead of never.
    """
    ALTER TABLE versions ADD COLUMN sidecars_pending INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX versions_sidecars_pending ON versions (sidecars_pending) WHERE sidecars_pending != 0
    """,
    # Evaluation scores per version (registry/scores.py): one set per version (the latest evaluation replaces the
    # last), with the protocol it was measured with and the recommended weight; one row per evaluator, metric and
    # weight (weight 0: the base on the same prompts and seeds).
    """
    CREATE TABLE score_sets (
        version_id INTEGER PRIMARY KEY REFERENCES versions(id) ON DELETE CASCADE,
        recommended_weight REAL,
        protocol TEXT NOT NULL DEFAULT '{}',
        source TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE scores (
        version_id INTEGER NOT NULL REFERENCES score_sets(version_id) ON DELETE CASCADE,
        evaluator TEXT NOT NULL,
        metric TEXT NOT NULL,
        weight REAL NOT NULL,
        higher_is_better INTEGER NOT NULL,
        mean REAL NOT NULL,
        std REAL NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (version_id, evaluator, metric, weight)
    );
    CREATE INDEX scores_by_metric ON scores (metric, evaluator)
    """,
    # How often each version was loaded to generate or train with (registry/uses.py): the library's "most used"
    # sort. Kept beside the versions, never part of their identity.
    """
    CREATE TABLE uses (
        version_id INTEGER PRIMARY KEY REFERENCES versions(id) ON DELETE CASCADE,
        count INTEGER NOT NULL,
        last_used REAL NOT NULL
    )
    """,
]


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """Open (and migrate) the index. ``readonly`` opens an existing file without writing anything.

    A read-only open of a WAL database needs its ``-shm`` file, which a read-only folder may lack and cannot get:
    then the file is opened ``immutable`` (SQLite reads it as a plain file, which is right for a read-only mount,
    where nobody can be writing it).
    """
    try:
        if readonly:
            conn = _open_readonly(path)
        else:
            conn = sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.create_function("ls_contains", 2, contains, deterministic=True)
        conn.create_function("ls_words_contain", 2, words_contain, deterministic=True)
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
        raise


def current(path: Path) -> bool:
    """Whether the index exists, is in WAL mode and has every migration: then it opens without the registry lock."""
    try:
        conn = sqlite3.connect(f"{_uri(path)}?mode=ro", uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error:
        return False
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        return version == len(MIGRATIONS) and str(mode).lower() == "wal"
    except sqlite3.Error:
        return False
    finally:
        conn.close()


def _uri(path: Path) -> str:
    return "file:" + quote(str(Path(path).absolute()))


def _open_readonly(path: Path) -> sqlite3.Connection:
    uri = _uri(path)
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        conn.close()
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        # committed versions may live in the WAL, which an immutable open would ignore: read a private copy,
        # where SQLite can make the -shm file it needs and replay the log
        return _snapshot(path, wal)
    conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
    conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    return conn


def _snapshot(path: Path, wal: Path) -> sqlite3.Connection:
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="lorastack-index-"))
    shutil.copyfile(path, folder / "index.sqlite")
    shutil.copyfile(wal, folder / "index.sqlite-wal")
    conn = sqlite3.connect(str(folder / "index.sqlite"), isolation_level=None)
    conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    import atexit

    atexit.register(shutil.rmtree, folder, True)
    return conn


def contains(text: str | None, needle: str | None) -> bool:
    """Case-insensitive substring test for any script (SQL ``LIKE`` folds ASCII only and treats ``_``/``%``
    as wildcards)."""
    return bool(text) and bool(needle) and needle.casefold() in text.casefold()


def words_contain(words_json: str | None, needle: str | None) -> bool:
    """Whether any word of a JSON list (trigger words, stored with ``\\u`` escapes) contains ``needle``."""
    try:
        words = json.loads(words_json or "[]")
    except ValueError:
        return False
    return isinstance(words, list) and any(isinstance(w, str) and contains(w, needle) for w in words)


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
        conn.execute("COMMIT")
    except BaseException:
        # a failed COMMIT (a full disk, a busy reader) may leave the transaction open, or SQLite may have rolled
        # it back already
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def index_error(e: sqlite3.Error, path: Path) -> RegistryError | None:
    """A SQLite error as the registry error a user can act on (one line naming the index); ``None`` for errors
    that are lorastack's own bugs (constraint violations, misuse), which keep their traceback."""
    text = str(e)
    if isinstance(e, sqlite3.OperationalError):
        if "full" in text:
            return NoSpaceError(
                f"{path}: the disk is full ({text}); nothing was changed. Free space (lorastack gc, lorastack rm) "
                "and try again"
            )
        if "readonly" in text or "read-only" in text:
            return ReadOnlyError(f"{path}: the registry index cannot be written ({text}); nothing was changed")
        if "locked" in text or "busy" in text:
            return BusyError(
                f"{path}: another lorastack process has held the registry for over {BUSY_TIMEOUT_MS // 1000} s "
                f"({text}); try again when it is done"
            )
        return RegistryError(f"{path}: the registry index cannot be used ({text})")
    if type(e) is not sqlite3.DatabaseError:  # IntegrityError, ProgrammingError, …: a bug, not the file
        return None
    return CorruptIndexError(
        f"{path}: the registry index is damaged ({text}); lorastack cannot read names, versions or tags from it. "
        "The stored files under blobs/ are untouched: restore index.sqlite from a backup"
    )
