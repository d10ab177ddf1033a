"""The query behind ``Registry.list``: one row per adapter (its latest version) or per version, filtered."""

from __future__ import annotations

import json
import sqlite3

from .errors import CorruptIndexError, InvalidValueError

# ORDER BY clauses of the sorts a listing offers; ties broken by name so that pages never overlap
SORTS = {
    "name": "ORDER BY a.name COLLATE NOCASE, v.number",  # names are unique case-folded: a total order
    "date": "ORDER BY v.created_at DESC, a.name COLLATE NOCASE, v.number",
    # most used first: the uses of every version of the adapter (registry/uses.py)
    "use": "ORDER BY (SELECT COALESCE(SUM(u.count), 0) FROM uses u JOIN versions vu ON vu.id = u.version_id "
    "WHERE vu.adapter_id = a.id) DESC, a.name COLLATE NOCASE, v.number",
}


def list_rows(
    db: sqlite3.Connection,
    family: str | None,
    search: str | None,
    all_versions: bool,
    missing: bool = False,
    lineage: str | None = None,
    tag: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    sort: str = "name",
) -> list[dict]:
    """Rows filtered by family, text (names, trigger words, descriptions, base models and every metadata value),
    in-place files gone missing, lineage label (exact, ASCII case folded) and tag (a registry tag, or a keyword tag
    of the metadata). ``sort``: one of ``SORTS`` (``date``: newest first; ``use``: most used first) or
    ``score:METRIC`` (best first, see ``scores.sort_clause``); ``limit``/``offset``: one page of them."""
    order, order_args = SORTS.get(sort), []
    if order is None and isinstance(sort, str) and sort.startswith("score:"):
        from .scores import sort_clause

        order, order_args = sort_clause(sort.partition(":")[2])
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'scores'").fetchone():
            order, order_args = SORTS["name"], []  # an index opened read-only before the scores migration
    if sort == "use" and not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'uses'").fetchone():
        order = SORTS["name"]  # an index opened read-only before the uses migration: nothing counted yet
    if order is None:
        raise InvalidValueError(f"sort {sort!r} is not one of: {', '.join(SORTS)}, score:METRIC")
    for what, value in (("limit", limit), ("offset", offset)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise InvalidValueError(f"{what} {value!r} is not a whole number of 0 or more")
    where, args = [], []
    # an index opened read-only before the metadata migration has no metadata: no version matches a metadata filter
    has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'version_meta'").fetchone()
    meta = "EXISTS (SELECT 1 FROM version_meta m WHERE m.version_id = v.id AND {})" if has_meta else "0"
    if lineage:
        where.append(meta.format("m.field = 'lineage' AND m.search_text = ? COLLATE NOCASE"))
        args += [lineage] if has_meta else []
    if tag:
        # metadata tags are stored one per line: match a whole line
        where.append(
            "(EXISTS (SELECT 1 FROM tags t WHERE t.version_id = v.id AND t.tag = ?) OR "
            + meta.format("m.field = 'tags' AND instr(lower(char(10) || m.search_text || char(10)), "
                          "lower(char(10) || ? || char(10))) > 0")
            + ")"
        )  # fmt: skip
        args += [tag, tag] if has_meta else [tag]
    # an index opened read-only before the in-place migration has no location columns: all its files are blobs
    located = any(c[1] == "missing_since" for c in db.execute("PRAGMA table_info(files)"))
    if missing:
        where.append("f.missing_since IS NOT NULL" if located else "0")
    if family:
        where.append("v.family = ?")
        args.append(family)
    if search:
        # substring, case-insensitive in every script; no LIKE (its _ and % are wildcards, and it folds ASCII only)
        where.append(
            "(ls_contains(a.name, ?) OR ls_words_contain(v.trigger_words, ?) OR ls_contains(v.description, ?) "
            "OR ls_contains(v.base_model, ?) OR " + meta.format("ls_contains(m.search_text, ?)") + ")"
        )
        args += [search] * (5 if has_meta else 4)
    columns = (
        "f.location, f.location_path, f.missing_since"
        if located
        else "NULL AS location, NULL AS location_path, NULL AS missing_since"
    )
    sql = (
        "SELECT a.name, v.number, v.family, v.kind, v.rank, v.created_at, v.trigger_words, f.size, f.sha256, "
        "(SELECT COUNT(*) FROM versions c WHERE c.adapter_id = a.id) AS versions, "
        f"(SELECT GROUP_CONCAT(t.tag, ',') FROM tags t WHERE t.version_id = v.id) AS tags, {columns}, "
        f"{_PROBLEM} AS problem "
        + (
            "FROM versions v JOIN adapters a ON a.id = v.adapter_id "
            if all_versions  # one row per adapter: its latest version, found from the adapter (in name order)
            else "FROM adapters a JOIN versions v ON v.id = COALESCE((SELECT t.version_id FROM tags t WHERE "
            "t.adapter_id = a.id AND t.tag = 'latest'), (SELECT v2.id FROM versions v2 WHERE v2.adapter_id = a.id "
            "ORDER BY v2.number DESC LIMIT 1)) "
        )
        + "JOIN files f ON f.version_id = v.id AND f.role = 'adapter' "
        + (f"WHERE {' AND '.join(where)} " if where else "")
        + order
        + (" LIMIT ? OFFSET ?" if limit is not None or offset else "")
    )
    args += order_args
    if limit is not None or offset:
        args += [-1 if limit is None else limit, offset]
    cursor = db.cursor()
    cursor.row_factory = None  # plain tuples: a large library's listing is bound by the work per row
    out = []
    for (
        name,
        number,
        family,
        kind,
        rank,
        created,
        raw,
        size,
        sha256,
        versions,
        tags,
        location,
        path,
        gone,
        bad,
    ) in cursor.execute(sql, args):
        if raw == "[]":  # most versions have no trigger words: no parser for them
            words = []
        else:
            try:
                words = json.loads(raw)
            except (TypeError, ValueError, RecursionError):
                words = None
            if type(words) is not list or not all(type(w) is str for w in words):
                bad = bad or "trigger_words holds something other than text"
        if bad is not None:
            raise _damaged(db, name, number, bad)
        out.append({
            "name": name,
            "version": number,
            "ref": f"{name}@{number}",
            "tags": sorted(tags.split(",")) if tags else [],
            "versions": versions,
            "family": family,
            "kind": kind,
            "rank": rank,
            "size": size,
            "sha256": sha256,
            "trigger_words": words,
            "created_at": float(created),
            "location": location or "blob",
            "path": path,  # an in-place file's path (lorastack scan); None for blobs
            "missing": gone is not None,
        })  # fmt: skip
    return out


#: A damaged record, checked by the query (in SQLite, not per row in Python): the first problem found, or NULL.
#: Trigger words that are text are parsed and checked per row, and only when there are some.
_PROBLEM = (
    "CASE WHEN typeof(v.number) != 'integer' OR v.number < 1 THEN 'its number is not a positive integer' "
    "WHEN typeof(v.created_at) NOT IN ('integer', 'real') OR NOT (v.created_at >= 0 AND v.created_at < 1e11) "
    "THEN 'created_at is not a time' "
    "WHEN typeof(v.trigger_words) != 'text' THEN 'trigger_words holds something other than text' "
    "WHEN v.rank IS NOT NULL AND typeof(v.rank) != 'integer' THEN 'rank is not an integer' "
    "WHEN typeof(f.size) != 'integer' OR typeof(f.sha256) != 'text' THEN 'a file record is not valid' END"
)


def _damaged(db, name, number, problem: str) -> CorruptIndexError:
    index = db.execute("PRAGMA database_list").fetchone()[2]
    return CorruptIndexError(
        f"{index}: the record of {name}@{number} is damaged ({problem}); restore index.sqlite from a backup, or "
        "remove that version"
    )
