"""Evaluation scores per version: what ``lorastack eval`` and ``train --eval-every`` measured, kept with the version.

A version holds one set of scores, the latest evaluation's (a new one replaces it in one transaction): per evaluator,
metric and adapter weight the mean, spread and count, and whether higher is better; weight 0 is the base on the same
prompts and seeds. With it: the recommended weight, the protocol (base, prompts, seeds, evaluators) and where the
scores came from (``eval`` or ``training``). Values come from plugins, so every one is checked and bounded first.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from lorastack.faults import crash_point

from .db import transaction
from .errors import InvalidValueError
from .folder import guarded
from .metadata import _stored_version_id, target

MAX_ROWS = 10_000
MAX_PROTOCOL = 2**20
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
SOURCES = ("eval", "training")


@dataclass
class StoredScores:
    ref: str
    rows: list[dict[str, Any]]
    recommended_weight: float | None
    protocol: dict[str, Any] = field(default_factory=dict)
    source: str = "eval"
    updated_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref, "results": self.rows, "recommended_weight": self.recommended_weight,
            "protocol": self.protocol, "source": self.source, "updated_at": self.updated_at,
        }  # fmt: skip


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidValueError(f"score {what} {value!r} is not a finite number")
    return float(value)


def check_row(row: Any) -> dict[str, Any]:
    """One score row (a dict or an object with ``as_dict()``) checked: names, finite numbers, a count."""
    row = row.as_dict() if hasattr(row, "as_dict") else dict(row)
    for key in ("evaluator", "metric"):
        if not isinstance(row.get(key), str) or not _NAME.match(row[key]):
            raise InvalidValueError(f"score {key} {row.get(key)!r} is not a lower-case name")
    n = row.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n < 2**31:
        raise InvalidValueError(f"score count {n!r} is not a positive integer")
    weight = _number(row.get("weight"), "weight")
    if abs(weight) > 100:
        raise InvalidValueError(f"score weight {weight:g} is outside -100…100")
    return {
        "evaluator": row["evaluator"], "metric": row["metric"], "weight": weight,
        "higher_is_better": bool(row.get("higher_is_better", True)), "mean": _number(row.get("mean"), "mean"),
        "std": _number(row.get("std", 0.0), "std"), "n": n,
    }  # fmt: skip


@guarded
def record_scores(registry, ref: str, rows, recommended: float | None, protocol: dict | None = None,
                  source: str = "eval") -> StoredScores:  # fmt: skip
    """Store ``rows`` (the version's and the base's, weight 0) as the scores of ``ref``, replacing its last set."""
    if source not in SOURCES:
        raise InvalidValueError(f"score source {source!r} is not one of: {', '.join(SOURCES)}")
    checked = [check_row(r) for r in rows]
    if len(checked) > MAX_ROWS:
        raise InvalidValueError(f"{len(checked):,} score rows; the most a version keeps is {MAX_ROWS:,}")
    keys = [(r["evaluator"], r["metric"], r["weight"]) for r in checked]
    if len(set(keys)) != len(keys):
        raise InvalidValueError("two score rows for the same evaluator, metric and weight")
    weight = None if recommended is None else _number(recommended, "recommended weight")
    text = json.dumps(protocol or {}, sort_keys=True, default=str)
    if len(text) > MAX_PROTOCOL:
        raise InvalidValueError(f"the evaluation protocol is over {MAX_PROTOCOL // 2**20} MiB of JSON")
    db = registry._db(write=True)
    version = target(registry, db, ref)
    now = time.time()
    with transaction(db):
        version_id = _stored_version_id(db, version.name, version.number)
        db.execute("DELETE FROM score_sets WHERE version_id = ?", (version_id,))  # its rows go with it (cascade)
        db.execute(
            "INSERT INTO score_sets (version_id, recommended_weight, protocol, source, updated_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (version_id, weight, text, source, now),
        )
        db.executemany(
            "INSERT INTO scores (version_id, evaluator, metric, weight, higher_is_better, mean, std, n) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(version_id, r["evaluator"], r["metric"], r["weight"], int(r["higher_is_better"]), r["mean"], r["std"],
              r["n"]) for r in checked],
        )  # fmt: skip
        crash_point("registry.scores.before-commit")
    return StoredScores(version.ref, checked, weight, json.loads(text), source, now)


@guarded
def get_scores(registry, ref: str) -> StoredScores | None:
    """The stored scores of ``ref``, or ``None`` when it was never evaluated."""
    version = registry.resolve(ref)
    db = registry._db()
    if db is None or not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'score_sets'").fetchone():
        return None  # an index opened read-only before the scores migration
    version_id = _stored_version_id(db, version.name, version.number)
    head = db.execute(
        "SELECT recommended_weight, protocol, source, updated_at FROM score_sets WHERE version_id = ?", (version_id,)
    ).fetchone()
    if head is None:
        return None
    rows = []
    for row in db.execute(
        "SELECT evaluator, metric, weight, higher_is_better, mean, std, n FROM scores WHERE version_id = ? "
        "ORDER BY evaluator, metric, weight",
        (version_id,),
    ):
        try:
            rows.append(check_row(dict(row)))
        except InvalidValueError:  # a damaged or foreign row: shown as absent, never as garbage
            continue
    try:
        protocol = json.loads(head["protocol"])
    except (TypeError, ValueError, RecursionError):
        protocol = {}
    return StoredScores(version.ref, rows, head["recommended_weight"], protocol if isinstance(protocol, dict) else {},
                        head["source"], head["updated_at"])  # fmt: skip


def headline(stored: StoredScores) -> dict[str, float]:
    """``evaluator.metric`` → the score at the recommended weight (else weight 1, else the largest): what ``show``
    prints and ``list --sort score:NAME`` orders by."""
    out: dict[str, float] = {}
    by_key: dict[str, list[dict]] = {}
    for r in stored.rows:
        if r["weight"] != 0:
            by_key.setdefault(f"{r['evaluator']}.{r['metric']}", []).append(r)
    for key, rows in by_key.items():
        pick = max(rows, key=lambda r: (r["weight"] == stored.recommended_weight, r["weight"] == 1.0, r["weight"]))
        out[key] = pick["mean"]
    return out


def sort_clause(metric: str) -> tuple[str, list[str]]:
    """The ``ORDER BY`` key of ``list --sort score:METRIC`` (``clip_t`` or ``clip.clip_t``): the version's score at
    its recommended weight (else weight 1, else the largest), best first, versions without one last."""
    if not isinstance(metric, str) or not re.match(r"^[a-z][a-z0-9_.-]{0,128}$", metric):
        raise InvalidValueError(f"sort score:{metric!r}: a metric name is lower-case letters, digits, '_' and '.'")
    key = (
        "(SELECT CASE WHEN s.higher_is_better THEN -s.mean ELSE s.mean END FROM scores s "
        "JOIN score_sets ss ON ss.version_id = s.version_id WHERE s.version_id = v.id AND s.weight != 0 AND "
        "(s.metric = ? OR s.evaluator || '.' || s.metric = ?) ORDER BY "
        "(s.weight = ss.recommended_weight) DESC, (s.weight = 1.0) DESC, s.weight DESC LIMIT 1)"
    )
    return f"ORDER BY {key} IS NULL, {key}, a.name COLLATE NOCASE, v.number", [metric, metric, metric, metric]
