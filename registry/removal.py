"""Removing tags, versions and adapters: the index change commits first, the blobs it frees go after."""

from __future__ import annotations

import os
from typing import Any

from lorastack.faults import crash_point

from .db import transaction
from .errors import ConflictError
from .names import LATEST, Ref


def remove_committed(registry, db, parsed: Ref, all_versions: bool, force: bool) -> tuple[dict[str, Any], set[str]]:
    with transaction(db):
        adapter_id = registry._adapter_id(db, parsed.name)
        if parsed.tag is not None and not all_versions:
            removed, version_ids = remove_tag(registry, db, adapter_id, parsed), []
        elif all_versions:
            removed = {"adapter": parsed.name}
            version_ids = [r[0] for r in db.execute("SELECT id FROM versions WHERE adapter_id = ?", (adapter_id,))]
        else:
            removed, version_ids = remove_version(registry, db, adapter_id, parsed, force)
        candidates = {
            r[0] for vid in version_ids for r in db.execute("SELECT sha256 FROM files WHERE version_id = ?", (vid,))
        }
        if version_ids:
            (name,) = db.execute("SELECT name FROM adapters WHERE id = ?", (adapter_id,)).fetchone()
            db.executemany(
                "INSERT OR IGNORE INTO retired_versions (name, number) SELECT ?, number FROM versions WHERE id = ?",
                [(name, vid) for vid in version_ids],
            )
            db.executemany("DELETE FROM versions WHERE id = ?", [(vid,) for vid in version_ids])
            (left,) = db.execute("SELECT COUNT(*) FROM versions WHERE adapter_id = ?", (adapter_id,)).fetchone()
            if left == 0:
                db.execute("DELETE FROM adapters WHERE id = ?", (adapter_id,))
            else:
                registry._follow_newest(db, adapter_id)
        crash_point("registry.rm.before-commit")
    return removed, candidates


def remove_tag(registry, db, adapter_id: int, parsed: Ref) -> dict[str, Any]:
    if parsed.tag.lower() == LATEST:
        raise ConflictError(
            f"'latest' always names a version; move it (lorastack tag {parsed.name}@N latest) or remove "
            f"versions instead"
        )
    deleted = db.execute("DELETE FROM tags WHERE adapter_id = ? AND tag = ?", (adapter_id, parsed.tag)).rowcount
    if not deleted:
        registry.resolve(parsed)  # raises NotFoundError listing the tags
    return {"tag": str(parsed)}


def remove_version(registry, db, adapter_id: int, parsed: Ref, force: bool) -> tuple[dict[str, Any], list[int]]:
    version_id = registry._version_id(db, adapter_id, parsed.version)
    tags = [r[0] for r in db.execute("SELECT tag FROM tags WHERE version_id = ? ORDER BY tag", (version_id,))]
    others = [t for t in tags if t.lower() != LATEST]
    if others and not force:
        raise ConflictError(
            f"{parsed} is tagged {', '.join(others)}; pass --with-tags to remove it and its tags, or move the tags"
        )
    if LATEST in (t.lower() for t in tags):
        db.execute("UPDATE adapters SET latest_pinned = 0 WHERE id = ?", (adapter_id,))
    db.execute("DELETE FROM tags WHERE version_id = ?", (version_id,))
    return {"version": str(parsed), "tags": tags}, [version_id]


def delete_unreferenced(registry, db, candidates: set[str]) -> int:
    """Delete the blobs among ``candidates`` that no file record references any more (under the blob lock)."""
    freed = 0
    for sha256 in sorted(candidates):
        if db.execute("SELECT 1 FROM files WHERE sha256 = ? LIMIT 1", (sha256,)).fetchone() is not None:
            continue
        blob = registry.blobs.path(sha256)
        if not os.path.lexists(blob):
            continue
        freed += registry.blobs.remove(blob)
        crash_point("registry.rm.unlinked")
    return freed
