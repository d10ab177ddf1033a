"""How often each version is used: counted each time lorastack takes its file from the registry to work with it
(generate, compare, reproduce, merge, bake, eval; each web studio request that generates with it).

A count is a convenience (the library's "most used" sort), so recording one never stands in the way of the work:
a registry that cannot be written (read-only, busy, full) simply does not count that use.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time

from .db import BUSY_TIMEOUT_MS, transaction
from .errors import RegistryError

#: The most a use waits for another writer before it goes uncounted.
USE_WAIT_MS = 100


def record_use(registry, ref: str) -> bool:
    """Count one use of the version ``ref`` names (exact ``name@N``); ``False`` where it could not be counted."""
    name, sep, number = ref.rpartition("@")
    if not sep or not number.isdigit():
        return False
    try:
        db = registry._db(write=True)
    except (RegistryError, sqlite3.Error, OSError):
        return False
    try:
        # a registry busy with another writer (a scan's batch) is not waited for: the use goes uncounted
        db.execute(f"PRAGMA busy_timeout = {USE_WAIT_MS}")
        with transaction(db):
            db.execute(
                "INSERT INTO uses (version_id, count, last_used) SELECT v.id, 1, ? FROM versions v JOIN adapters a "
                "ON a.id = v.adapter_id WHERE a.name = ? AND v.number = ? "
                "ON CONFLICT (version_id) DO UPDATE SET count = count + 1, last_used = excluded.last_used",
                (time.time(), name, int(number)),
            )
        return True
    except (RegistryError, sqlite3.Error, OSError):
        return False
    finally:
        with contextlib.suppress(sqlite3.Error):
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def uses(registry, ref: str) -> int:
    """How often the version ``ref`` names (exact ``name@N``) was used."""
    name, _, number = ref.rpartition("@")
    db = registry._db()
    if db is None or not number.isdigit():
        return 0
    row = db.execute(
        "SELECT u.count FROM uses u JOIN versions v ON v.id = u.version_id JOIN adapters a ON a.id = v.adapter_id "
        "WHERE a.name = ? AND v.number = ?",
        (name, int(number)),
    ).fetchone()
    return row[0] if row else 0
