"""Lookups ``lorastack serve`` needs beside ``Registry.list``: each card's first preview, and images by hash.

Files are served by their registry identity (a preview's sha256) and only when the index lists them as a preview
or thumbnail of some version, so no request names a path.
"""

from __future__ import annotations

from pathlib import Path

from .errors import NotFoundError
from .folder import guarded


def _has_previews(db) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'previews'").fetchone() is not None


@guarded
def first_thumbnails(registry, refs: list[tuple[str, int]]) -> dict[str, str]:
    """``name@N`` → the sha256 of its first preview's thumbnail, for the versions of one page (one query)."""
    db = registry._db()
    if db is None or not refs or not _has_previews(db):
        return {}
    values = ", ".join("(?, ?)" for _ in refs)
    rows = db.execute(
        f"WITH wanted(name, number) AS (VALUES {values}) "
        "SELECT a.name, v.number, p.thumbnail_sha256 FROM wanted w "
        "JOIN adapters a ON a.name = w.name JOIN versions v ON v.adapter_id = a.id AND v.number = w.number "
        "JOIN previews p ON p.version_id = v.id "
        "WHERE p.position = (SELECT MIN(p2.position) FROM previews p2 WHERE p2.version_id = v.id)",
        [x for ref in refs for x in ref],
    )
    return {f"{r['name']}@{r['number']}": r["thumbnail_sha256"] for r in rows}


@guarded
def preview_blob(registry, sha256: str, thumbnail: bool) -> tuple[Path, str]:
    """The verified blob of a preview (or thumbnail) the index lists, and its media type."""
    db = registry._db()
    column = "thumbnail_sha256" if thumbnail else "sha256"
    row = (
        db.execute(f"SELECT media_type FROM previews WHERE {column} = ? LIMIT 1", (sha256,)).fetchone()
        if db is not None and _has_previews(db)
        else None
    )
    if row is None:
        raise NotFoundError(f"no {'thumbnail' if thumbnail else 'preview'} {sha256!r} in the registry")
    return registry.blobs.check(sha256), "image/jpeg" if thumbnail else row["media_type"]


@guarded
def families(registry) -> list[str]:
    """The families of the versions in the registry (for the library's filter)."""
    db = registry._db()
    if db is None:
        return []
    return sorted(r[0] for r in db.execute("SELECT DISTINCT family FROM versions WHERE family IS NOT NULL"))
