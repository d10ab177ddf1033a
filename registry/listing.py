"""The query behind ``Registry.list``: one row per adapter (its latest version) or per version, filtered."""

from __future__ import annotations

import json
import sqlite3


def list_rows(db: sqlite3.Connection, family: str | None, search: str | None, all_versions: bool) -> list[dict]:
    where, args = [], []
    if not all_versions:
        where.append(
            "v.id = COALESCE((SELECT t.version_id FROM tags t WHERE t.adapter_id = a.id AND t.tag = 'latest'), "
            "(SELECT v2.id FROM versions v2 WHERE v2.adapter_id = a.id ORDER BY v2.number DESC LIMIT 1))"
        )
    if family:
        where.append("v.family = ?")
        args.append(family)
    if search:
        # substring, case-insensitive in every script; no LIKE (its _ and % are wildcards, and it folds ASCII only)
        where.append(
            "(ls_contains(a.name, ?) OR ls_words_contain(v.trigger_words, ?) OR ls_contains(v.description, ?) "
            "OR ls_contains(v.base_model, ?))"
        )
        args += [search] * 4
    sql = (
        "SELECT a.name, v.number, v.family, v.kind, v.rank, v.created_at, v.trigger_words, f.size, f.sha256, "
        "(SELECT COUNT(*) FROM versions c WHERE c.adapter_id = a.id) AS versions, "
        "(SELECT GROUP_CONCAT(t.tag, ',') FROM tags t WHERE t.version_id = v.id) AS tags "
        "FROM versions v JOIN adapters a ON a.id = v.adapter_id "
        "JOIN files f ON f.version_id = v.id AND f.role = 'adapter' "
        + (f"WHERE {' AND '.join(where)} " if where else "")
        + "ORDER BY a.name COLLATE NOCASE, v.number"
    )
    return [
        {
            "name": r["name"],
            "version": r["number"],
            "ref": f"{r['name']}@{r['number']}",
            "tags": sorted(r["tags"].split(",")) if r["tags"] else [],
            "versions": r["versions"],
            "family": r["family"],
            "kind": r["kind"],
            "rank": r["rank"],
            "size": r["size"],
            "sha256": r["sha256"],
            "trigger_words": json.loads(r["trigger_words"]),
            "created_at": r["created_at"],
        }
        for r in db.execute(sql, args)
    ]
