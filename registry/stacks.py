"""Named stacks: adapters at scales, and prompt text, saved under a name (``lorastack stack save``) and used as
``generate --stack NAME``.

Each adapter is stored as the immutable version its reference resolved to when the stack was saved (``name@N``),
with the reference as given (and its tag): a tag that moves later does not change the stack, and a removed
version is named when the stack is used, never dropped silently. Saving replaces a stack only when asked, in one
transaction.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from lorastack.faults import crash_point

from .db import transaction
from .errors import ConflictError, InvalidValueError, NotFoundError
from .folder import guarded
from .names import LATEST, MAX_NAME, parse_ref, validate_name
from .records import clean_text

MAX_STACK_ADAPTERS = 64
MAX_STACK_PROMPT = 10_000


@dataclass(frozen=True)
class StackAdapter:
    """One adapter of a stack: the name it is loaded under, the version, the reference given, its scale."""

    name: str
    ref: str  # adapter@N, the version saved
    given: str  # what the user typed (me/style:v1)
    tag: str | None
    scale: Any

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ref": self.ref, "given": self.given, "tag": self.tag, "scale": self.scale}


@dataclass
class Stack:
    name: str
    prompt: str = ""
    negative_prompt: str = ""
    adapters: list[StackAdapter] = field(default_factory=list)
    created_at: float = 0.0
    updated_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "adapters": [a.to_json() for a in self.adapters],
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def _check_text(value: str, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_STACK_PROMPT or clean_text(value) != value or "\x00" in value:
        raise InvalidValueError(f"stack {what}: must be UTF-8 text of at most {MAX_STACK_PROMPT} characters")
    return value


@guarded
def save_stack(
    registry,
    name: str,
    adapters: list[tuple[str, str, Any]],
    prompt: str = "",
    negative_prompt: str = "",
    overwrite: bool = False,
) -> Stack:
    """Save ``adapters`` (``(load name, reference, scale)`` each, scales already checked) under ``name``.

    Every reference is resolved now (:class:`NotFoundError` naming it); a stack of that name is replaced only
    with ``overwrite`` (else :class:`ConflictError`).
    """
    validate_name(name)
    _check_text(prompt, "prompt")
    _check_text(negative_prompt, "negative prompt")
    if not adapters and not prompt:
        raise InvalidValueError(f"stack '{name}': give at least one --lora or a --prompt")
    if len(adapters) > MAX_STACK_ADAPTERS:
        raise InvalidValueError(
            f"stack '{name}': {len(adapters)} adapters; a stack holds at most {MAX_STACK_ADAPTERS}"
        )
    entries, names = [], set()
    for load_name, given, scale in adapters:
        if load_name.lower() in names:
            raise InvalidValueError(f"stack '{name}': the adapter name '{load_name}' is given twice")
        names.add(load_name.lower())
        ref = parse_ref(given)
        version = registry.resolve(ref)
        tag = ref.tag or (LATEST if ref.version is None else None)
        entries.append(StackAdapter(load_name, version.ref, given, tag, scale))
    now = time.time()
    with transaction(registry._db(write=True)) as db:
        old = db.execute("SELECT name, created_at FROM stacks WHERE name = ?", (name,)).fetchone()
        if old is not None and not overwrite:
            raise ConflictError(f"a stack named '{old['name']}' exists; --force replaces it")
        for entry in entries:  # a version removed since it was resolved: refused, not saved dangling
            adapter, _, number = entry.ref.rpartition("@")
            found = db.execute(
                "SELECT 1 FROM versions v JOIN adapters a ON a.id = v.adapter_id WHERE a.name = ? AND v.number = ?",
                (adapter, int(number)),
            ).fetchone()
            if found is None:
                raise NotFoundError(f"{entry.ref} was removed while the stack was saved; try again")
        db.execute("DELETE FROM stacks WHERE name = ?", (name,))
        db.execute(
            "INSERT INTO stacks (name, prompt, negative_prompt, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            (name, prompt, negative_prompt, old["created_at"] if old else now, now),
        )
        for position, entry in enumerate(entries):
            adapter, _, number = entry.ref.rpartition("@")
            db.execute(
                "INSERT INTO stack_adapters (stack_name, position, load_name, adapter_name, number, given, tag, "
                "scale) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, position, entry.name, adapter, int(number), entry.given, entry.tag, json.dumps(entry.scale)),
            )
        crash_point("registry.stack.before-commit")
    return get_stack(registry, name)


def _rows(db, name: str) -> Stack | None:
    row = db.execute("SELECT * FROM stacks WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None
    stack = Stack(row["name"], row["prompt"], row["negative_prompt"], [], row["created_at"], row["updated_at"])
    for a in db.execute("SELECT * FROM stack_adapters WHERE stack_name = ? ORDER BY position", (row["name"],)):
        ref = f"{a['adapter_name']}@{a['number']}"
        stack.adapters.append(StackAdapter(a["load_name"], ref, a["given"], a["tag"], json.loads(a["scale"])))
    return stack


@guarded
def get_stack(registry, name: str) -> Stack:
    """The stack ``name``; :class:`NotFoundError` listing the stacks there are."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise NotFoundError(f"no stack named {str(name)[:60]!r}")
    db = registry._db()
    stack = _rows(db, name) if db is not None else None
    if stack is None:
        names = [s.name for s in list_stacks(registry)]
        raise NotFoundError(f"no stack named '{name}'; stacks: {', '.join(names) or 'none'}")
    return stack


@guarded
def list_stacks(registry) -> list[Stack]:
    db = registry._db()
    if db is None:
        return []
    return [_rows(db, row[0]) for row in db.execute("SELECT name FROM stacks ORDER BY name")]


@guarded
def remove_stack(registry, name: str) -> Stack:
    """Remove the stack ``name`` (its adapters stay in the registry); the stack as it was."""
    stack = get_stack(registry, name)
    with transaction(registry._db(write=True)) as db:
        db.execute("DELETE FROM stacks WHERE name = ?", (stack.name,))
        crash_point("registry.stack.remove.before-commit")
    return stack


@guarded
def dangling(registry, adapter: str | None = None) -> list[dict[str, str]]:
    """``{"stack", "ref"}`` for each saved stack entry whose version is no longer in the registry (of ``adapter``
    only, if given): what ``lorastack rm`` warns about, since using such a stack names it as missing."""
    db = registry._db()
    if db is None:
        return []
    rows = db.execute(
        "SELECT s.stack_name, s.adapter_name, s.number FROM stack_adapters s WHERE (? IS NULL OR s.adapter_name = ? "
        "COLLATE NOCASE) AND NOT EXISTS (SELECT 1 FROM versions v JOIN adapters a ON a.id = v.adapter_id "
        "WHERE a.name = s.adapter_name AND v.number = s.number) ORDER BY s.stack_name COLLATE NOCASE, s.position",
        (adapter, adapter),
    )
    return [{"stack": r[0], "ref": f"{r[1]}@{r[2]}"} for r in rows]
