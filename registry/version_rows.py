"""Index rows of versions and tags that every writer shares (import, scan, tag, removal): version numbers that are
never given out twice, ``latest`` following the newest version unless pinned, tags, provenance merges.

Each function takes an open connection inside the caller's transaction and commits nothing itself.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import ConflictError
from .names import LATEST, MAX_VERSION


def new_number(db, adapter_id: int, name: str, wanted: int | None) -> int:
    """``wanted`` if ``name`` never had that version, else one more than every number it ever had."""
    taken = db.execute(
        "SELECT 1 FROM versions WHERE adapter_id = ? AND number = ? UNION ALL "
        "SELECT 1 FROM retired_versions WHERE name = ? AND number = ?",
        (adapter_id, wanted, name, wanted),
    ).fetchone()
    if wanted is not None and taken is None:
        return wanted
    (highest,) = db.execute(
        "SELECT MAX(n) FROM (SELECT MAX(number) AS n FROM versions WHERE adapter_id = ? "
        "UNION ALL SELECT MAX(number) FROM retired_versions WHERE name = ?)",
        (adapter_id, name),
    ).fetchone()
    number = (highest or 0) + 1
    if number > MAX_VERSION:
        raise ConflictError(f"'{name}' has used every version number up to {MAX_VERSION}")
    return number


def follow_newest(db, adapter_id: int) -> None:
    """Unless ``latest`` is pinned, point it at the highest-numbered version."""
    pinned = db.execute("SELECT latest_pinned FROM adapters WHERE id = ?", (adapter_id,)).fetchone()
    newest = db.execute(
        "SELECT id FROM versions WHERE adapter_id = ? ORDER BY number DESC LIMIT 1", (adapter_id,)
    ).fetchone()
    if newest is not None and (not pinned[0] or not has_tag(db, adapter_id, LATEST)):
        set_tag(db, adapter_id, LATEST, newest[0])


def has_tag(db, adapter_id: int, tag: str) -> bool:
    return db.execute("SELECT 1 FROM tags WHERE adapter_id = ? AND tag = ?", (adapter_id, tag)).fetchone() is not None


def merge_provenance(db, version_id: int, updates: dict[str, Any]) -> None:
    (raw,) = db.execute("SELECT provenance FROM versions WHERE id = ?", (version_id,)).fetchone()
    merged = {**json.loads(raw), **updates}
    db.execute("UPDATE versions SET provenance = ? WHERE id = ?", (json.dumps(merged, sort_keys=True), version_id))


def set_tag(db, adapter_id: int, tag: str, version_id: int) -> None:
    db.execute(
        "INSERT INTO tags (adapter_id, tag, version_id) VALUES (?, ?, ?) "
        "ON CONFLICT (adapter_id, tag) DO UPDATE SET version_id = excluded.version_id",
        (adapter_id, tag, version_id),
    )
