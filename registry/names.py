"""Names, tags and references.

* A **name** is ``name`` or ``namespace/name``. Each part starts with a letter or digit and holds letters, digits,
  ``.``, ``_`` and ``-``; at most 200 characters in all. Names compare case-insensitively (like ollama's).
* A **tag** follows the same rule for one part (at most 128 characters) and may not be all digits (those read as
  version numbers).
* A **reference** is ``name``, ``name:tag`` or ``name@N`` (version N); ``name`` alone means ``name:latest``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidNameError

LATEST = "latest"
MAX_NAME = 200
MAX_TAG = 128
#: Words that cannot be adapter names: they would read as commands or tags.
RESERVED_NAMES = frozenset({"latest", "all", "none", "con", "nul", "prn", "aux"})
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _check_text(kind: str, value: str, limit: int) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidNameError(f"{kind} is empty")
    if len(value) > limit:
        raise InvalidNameError(f"{kind} {value[:40]!r}… is longer than {limit} characters")
    bad = next((c for c in value if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise InvalidNameError(f"{kind} {value!r} contains a control character ({bad!r})")
    if ".." in value:
        raise InvalidNameError(f"{kind} {value!r} contains '..'")


def _check_part(kind: str, whole: str, part: str) -> None:
    if not part:
        raise InvalidNameError(f"{kind} {whole!r} has an empty part; '/' may only separate a namespace from a name")
    if not _PART.fullmatch(part):
        bad = next((c for c in part if not (c.isascii() and (c.isalnum() or c in "._-"))), None)
        if bad is not None:
            raise InvalidNameError(
                f"{kind} {whole!r} contains {bad!r}; use letters, digits, '.', '_' and '-'"
                + (" ('/' only between a namespace and a name)" if kind == "name" else "")
            )
        raise InvalidNameError(f"{kind} {whole!r} must start with a letter or a digit")


def validate_name(name: str) -> str:
    """Return ``name`` or raise :class:`InvalidNameError` naming the rule it breaks."""
    _check_text("name", name, MAX_NAME)
    parts = name.split("/")
    if len(parts) > 2:
        raise InvalidNameError(f"name {name!r} has more than one '/'; use namespace/name")
    for part in parts:
        _check_part("name", name, part)
    if parts[-1].lower() in RESERVED_NAMES:
        raise InvalidNameError(f"name {name!r} is a reserved word ({', '.join(sorted(RESERVED_NAMES))})")
    return name


def validate_tag(tag: str) -> str:
    """Return ``tag`` or raise :class:`InvalidNameError` naming the rule it breaks."""
    _check_text("tag", tag, MAX_TAG)
    if "/" in tag:
        raise InvalidNameError(f"tag {tag!r} contains '/'; tags are one word")
    _check_part("tag", tag, tag)
    if tag.isdigit():
        raise InvalidNameError(f"tag {tag!r} is all digits, which reads as a version; write name@{tag} for versions")
    return tag


@dataclass(frozen=True)
class Ref:
    """A parsed reference: ``name`` plus either a ``tag`` or a ``version``."""

    name: str
    tag: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        return f"{self.name}:{self.tag or LATEST}"

    @property
    def explicit(self) -> bool:
        """Whether the reference named a tag or a version (``name`` alone did not)."""
        return self.tag is not None or self.version is not None


def parse_ref(text: str) -> Ref:
    """``name``, ``name:tag`` or ``name@N`` → :class:`Ref`, validating every part."""
    if not isinstance(text, str) or not text:
        raise InvalidNameError("reference is empty")
    if "@" in text:
        name, _, number = text.rpartition("@")
        if not number.isdigit() or int(number) < 1:
            raise InvalidNameError(f"reference {text!r}: the version after '@' must be a number from 1")
        return Ref(validate_name(name), version=int(number))
    if ":" in text:
        name, _, tag = text.rpartition(":")
        return Ref(validate_name(name), tag=validate_tag(tag))
    return Ref(validate_name(text))


def parse_name_tag(text: str) -> tuple[str, str | None]:
    """``NAME[:TAG]`` as given to ``import --name`` → (name, tag or None)."""
    ref = parse_ref(text)
    if ref.version is not None:
        raise InvalidNameError(f"{text!r}: give a name and optionally a tag (name:tag), not a version")
    return ref.name, ref.tag
