"""Metadata per version, each value with the source it came from.

A version's file and its import details never change; what people know about it grows: trigger-word groups, the
preferred weight, a negative prompt, notes, the base-model lineage (Pony, Illustrious, NoobAI, FLUX.1-dev, …), the
license, links to Civitai and the Hub. Each field holds one value and its source:

* ``user`` — written with ``lorastack edit``; never replaced by another source unless the caller asks
  (``overwrite=True``);
* ``sidecar`` — read from the files beside an adapter (A1111, Civitai Helper, ComfyUI-Lora-Manager: see
  :mod:`lorastack.registry.sidecars`);
* ``civitai``, ``hub`` — found by a metadata source (``lorastack enrich``);
* ``header`` — the adapter file's own header (modelspec, kohya ``ss_*``), also derived on the fly for versions that
  have no stored value.

A value from another source fills a field that is empty, refreshes one the same source wrote, or replaces one from a
source ranked lower (:data:`SOURCES`, most trusted first). Every value is validated and bounded before it is stored
(it comes from files and HTTP answers), and its text is flattened into ``search_text`` for ``list`` filters.
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
from .errors import InvalidValueError, NotFoundError
from .folder import guarded

#: Sources, most trusted first: a value from one replaces only values from those after it. A metadata source
#: plugin's name is a source too, ranked with the external ones (as ``civitai``).
SOURCES = ("user", "sidecar", "civitai", "hub", "header")
_SOURCE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

MAX_TEXT = 100_000  # notes, negative text, description
MAX_LABEL = 1000  # one-line values: lineage, license, title, ids
MAX_GROUPS = 100
MAX_WORDS = 1000
MAX_WORD = 1000
MAX_WEIGHT = 10.0
_AIR = re.compile(r"^urn:air:[a-z0-9_.-]{1,32}:[a-z0-9_.-]{1,32}:[a-z0-9_.-]{1,32}:[A-Za-z0-9_.@/-]{1,200}$")
_URL = re.compile(r"^https?://[^\s]{1,2000}$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")

#: field → (kind, what it is, for messages and docs)
FIELDS: dict[str, tuple[str, str]] = {
    "trigger_groups": ("groups", "trigger-word groups (each a list of words used together)"),
    "weight": ("weight", f"preferred weight, a number in -{MAX_WEIGHT:g}…{MAX_WEIGHT:g}"),
    "negative": ("text", "negative prompt text"),
    "notes": ("text", "notes"),
    "description": ("text", "description"),
    "title": ("label", "title"),
    "base_model": ("label", "base model"),
    "lineage": ("label", "base-model lineage label (Pony, Illustrious, NoobAI, FLUX.1-dev, …)"),
    "sd_version": ("label", "A1111's 'sd version' (SD1, SD2, SDXL, …)"),
    "license": ("label", "license"),
    "tags": ("words", "keyword tags"),
    "training_tags": ("words", "the most frequent tags of the training captions (kohya ss_tag_frequency)"),
    "civitai_model_id": ("id", "Civitai model id"),
    "civitai_version_id": ("id", "Civitai model-version id"),
    "air": ("air", "Civitai AIR (urn:air:…)"),
    "hub_repo": ("repo", "Hugging Face Hub repo id"),
    "url": ("url", "a web page about the adapter (http or https)"),
}


@dataclass(frozen=True)
class MetaValue:
    value: Any
    source: str
    updated_at: float | None = None  # None: derived from the header, not stored

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "updated_at": self.updated_at}


@dataclass
class SetReport:
    """What a :func:`set_metadata` call changed, and what it kept because a more trusted source wrote it."""

    ref: str
    changed: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # field → the source whose value was kept

    def as_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "changed": self.changed, "kept": self.kept}


def _text(value: Any, limit: int, what: str, one_line: bool = False) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidValueError(f"{what} must be text of at most {limit:,} characters, got {_shown(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValueError(f"{what} holds bytes that are not UTF-8 text") from None
    if one_line and ("\n" in value or "\r" in value):
        raise InvalidValueError(f"{what} must be one line, got {_shown(value)}")
    return value.strip()


def _words(value: Any, what: str) -> list[str]:
    if not isinstance(value, list | tuple) or len(value) > MAX_WORDS:
        raise InvalidValueError(f"{what} must be a list of at most {MAX_WORDS} words, got {_shown(value)}")
    out: list[str] = []
    for word in value:
        word = _text(word, MAX_WORD, f"{what}: a word", one_line=True)
        if word and word not in out:
            out.append(word)
    return out


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


def validate_value(name: str, value: Any) -> Any:
    """``value`` checked and normalised for field ``name``; :class:`InvalidValueError` naming what is wrong."""
    if name not in FIELDS:
        raise InvalidValueError(f"unknown metadata field {name!r}; fields: {', '.join(FIELDS)}")
    kind, what = FIELDS[name]
    if kind == "groups":
        if not isinstance(value, list | tuple) or len(value) > MAX_GROUPS:
            raise InvalidValueError(f"{what}: at most {MAX_GROUPS} groups, got {_shown(value)}")
        groups = [g for g in (_words(g, "a trigger-word group") for g in value) if g]
        return [g for i, g in enumerate(groups) if g not in groups[:i]]
    if kind == "weight":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidValueError(f"{what}; got {_shown(value)}")
        if abs(value) > MAX_WEIGHT:
            raise InvalidValueError(f"{what}; got {value:g}")
        return float(value)
    if kind == "text":
        return _text(value, MAX_TEXT, what)
    if kind == "words":
        return _words(value, what)
    if kind == "id":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**53:
            raise InvalidValueError(f"{what} must be a positive integer, got {_shown(value)}")
        return value
    text = _text(value, MAX_LABEL, what, one_line=True)
    pattern = {"air": _AIR, "url": _URL, "repo": _REPO}.get(kind)
    if pattern is not None and not pattern.match(text):
        raise InvalidValueError(f"{what}: {_shown(text)} is not one")
    if not text:
        raise InvalidValueError(f"{what} is empty")
    return text


def search_text(value: Any) -> str:
    """The text of a value as ``list`` filters match it: words and groups joined by ``\\n``."""
    if isinstance(value, list):
        return "\n".join(search_text(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Target:
    """A version named exactly (``name@N``): what writers of its metadata and previews need of it."""

    name: str
    number: int

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.number}"


def target(registry, db, ref: str):
    """The version ``ref`` names: one lookup for an exact ``name@N`` that exists (a scan writes thousands), else
    :meth:`Registry.resolve` (tags, ``latest``, suggestions for a name not found)."""
    name, sep, number = ref.rpartition("@")
    if sep and number.isascii() and number.isdigit() and len(number) < 10:
        row = db.execute(
            "SELECT 1 FROM versions v JOIN adapters a ON a.id = v.adapter_id WHERE a.name = ? AND v.number = ?",
            (name, int(number)),
        ).fetchone()
        if row is not None:
            return Target(name, int(number))
    return registry.resolve(ref)


def _stored_version_id(db, name: str, number: int) -> int:
    row = db.execute(
        "SELECT v.id FROM versions v JOIN adapters a ON a.id = v.adapter_id WHERE a.name = ? AND v.number = ?",
        (name, number),
    ).fetchone()
    if row is None:  # removed between resolve and here
        raise NotFoundError(f"{name}@{number} is no longer in the registry")
    return row[0]


def _stored(db, version_id: int) -> dict[str, MetaValue]:
    out = {}
    for row in db.execute(
        "SELECT field, value, source, updated_at FROM version_meta WHERE version_id = ?", (version_id,)
    ):
        try:
            value = validate_value(row["field"], json.loads(row["value"]))
        except (ValueError, RecursionError):  # a damaged or foreign row: shown as absent, never as garbage
            continue
        out[row["field"]] = MetaValue(value, row["source"], row["updated_at"])
    return out


@guarded
def get_metadata(registry, ref: str, derived: bool = True) -> dict[str, MetaValue]:
    """Every metadata value of the version ``ref`` names, field → :class:`MetaValue`, in :data:`FIELDS` order.

    With ``derived`` (the default), fields nothing stored are filled from the file's header (source ``header``).
    """
    from .sidecars import header_values

    version = registry.resolve(ref)
    db = registry._db()
    stored = _stored(db, _stored_version_id(db, version.name, version.number)) if db is not None else {}
    found = dict(stored)
    if derived:
        for name, value in header_values(version.metadata).items():
            found.setdefault(name, MetaValue(value, "header"))
    return {name: found[name] for name in FIELDS if name in found}


def _wins(new_source: str, old: MetaValue | None, overwrite: bool) -> bool:
    if old is None or overwrite or new_source == "user" or new_source == old.source:
        return True
    if old.source == "user":
        return False
    return _rank(new_source) < _rank(old.source)


def _rank(source: str) -> int:
    return SOURCES.index(source) if source in SOURCES else SOURCES.index("civitai")


def check_source(source: str) -> str:
    """``source`` if it can be recorded as a value's source (a known one or a plugin's name)."""
    if not isinstance(source, str) or not (source in SOURCES or _SOURCE_NAME.match(source)):
        raise InvalidValueError(
            f"unknown metadata source {source!r}; sources: {', '.join(SOURCES)} or a plugin's name"
        )
    return source


@guarded
def set_metadata(registry, ref: str, values: dict[str, Any], source: str, overwrite: bool = False) -> SetReport:
    """Store ``values`` (field → value) for the version ``ref`` names, recorded as coming from ``source``.

    All values are checked first; nothing is stored if one is wrong. A value ``None`` clears the field (as the user
    only, or with ``overwrite``). What a more trusted source wrote is kept and reported (see the module docstring).
    One transaction.
    """
    return set_metadata_many(registry, [(ref, values)], source, overwrite)[0]


@guarded
def set_metadata_many(
    registry, items: list[tuple[str, dict[str, Any]]], source: str, overwrite: bool = False
) -> list[SetReport]:
    """:func:`set_metadata` for several versions in one transaction (a scan records a batch's sidecars at once:
    one commit, one fsync, instead of one per file). Every value of every item is checked before anything is
    stored."""
    check_source(source)
    db = registry._db(write=True)
    checked = [
        (target(registry, db, ref), {name: None if value is None else validate_value(name, value)
                                     for name, value in values.items()})
        for ref, values in items
    ]  # fmt: skip
    reports = []
    now = time.time()
    with transaction(db):
        for version, fields in checked:
            reports.append(_store(db, version, fields, source, overwrite, now))
        crash_point("registry.metadata.before-commit")
    return reports


def _store(db, version, checked: dict[str, Any], source: str, overwrite: bool, now: float) -> SetReport:
    report = SetReport(version.ref)
    version_id = _stored_version_id(db, version.name, version.number)
    stored = _stored(db, version_id)
    for name, value in checked.items():
        old = stored.get(name)
        if not _wins(source, old, overwrite) or (value is None and source != "user" and not overwrite):
            report.kept[name] = old.source if old is not None else source
            continue
        if value is None:
            db.execute("DELETE FROM version_meta WHERE version_id = ? AND field = ?", (version_id, name))
        elif old is not None and old.value == value and old.source == source:
            continue  # nothing new: keep the old time, report nothing
        else:
            db.execute(
                "INSERT INTO version_meta (version_id, field, value, source, search_text, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (version_id, field) DO UPDATE SET value = excluded.value, "
                "source = excluded.source, search_text = excluded.search_text, updated_at = excluded.updated_at",
                (version_id, name, json.dumps(value, sort_keys=True), source, search_text(value), now),
            )
        report.changed.append(name)
    return report


def missing_fields(values: dict[str, MetaValue], wanted: tuple[str, ...]) -> list[str]:
    """Which of ``wanted`` have no value (what ``enrich`` looks for)."""
    return [name for name in wanted if name not in values]


@guarded
def versions_without(registry, source: str) -> list[dict[str, Any]]:
    """Every version no value of ``source`` is stored for, with what a lookup needs, in one query (``enrich`` over
    a large library): ``ref``, ``sha256``, ``tensor_sha256``, ``provenance``."""
    db = registry._db()
    if db is None:
        return []
    rows = db.execute(
        "SELECT a.name, v.number, v.provenance, f.sha256, f.tensor_sha256 FROM versions v "
        "JOIN adapters a ON a.id = v.adapter_id JOIN files f ON f.version_id = v.id AND f.role = 'adapter' "
        "WHERE NOT EXISTS (SELECT 1 FROM version_meta m WHERE m.version_id = v.id AND m.source = ?) "
        "ORDER BY a.name COLLATE NOCASE, v.number",
        (check_source(source),),
    )
    out = []
    for row in rows:
        try:
            provenance = json.loads(row["provenance"])
        except (TypeError, ValueError, RecursionError):
            provenance = {}
        out.append({
            "ref": f"{row['name']}@{row['number']}", "sha256": row["sha256"], "tensor_sha256": row["tensor_sha256"],
            "provenance": provenance if isinstance(provenance, dict) else {},
        })  # fmt: skip
    return out
