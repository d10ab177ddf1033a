"""Names, tags and references.

* A **name** is ``name`` or ``namespace/name``. Each part starts with a letter or digit and holds letters, digits,
  ``.``, ``_`` and ``-``; at most 200 characters in all. Names compare case-insensitively (like ollama's).
* A **tag** follows the same rule for one part (at most 128 characters) and may not be all digits (those read as
  version numbers).
* A **reference** is ``name``, ``name:tag`` or ``name@N`` (version N, from 1 to :data:`MAX_VERSION`); ``name``
  alone means ``name:latest``.

Names become file and folder names (run folders, Hub file names), so no part may be a Windows device name (``con``,
``nul``, ``com1``…``com9``, ``lpt1``…``lpt9``, with or without an extension: Windows opens ``con.txt`` as the
console) or end with a dot (Windows drops it, so ``a.`` and ``a`` would be one file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidNameError

LATEST = "latest"
MAX_NAME = 200
MAX_TAG = 128
#: The largest version number: SQLite integers are 64-bit, and nobody makes a billion versions of one adapter.
MAX_VERSION = 999_999_999
#: Words that cannot be adapter names: they would read as commands or tags.
RESERVED_NAMES = frozenset({"latest", "all", "none"})
#: Windows device names, which Windows opens as devices whatever the extension.
WINDOWS_DEVICES = frozenset(
    {"con", "nul", "prn", "aux", "conin$", "conout$"} | {f"{d}{i}" for d in ("com", "lpt") for i in range(1, 10)}
)
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_VERSION = re.compile(r"[0-9]{1,9}")


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
    if kind == "name":
        if part.split(".", 1)[0].lower() in WINDOWS_DEVICES:
            raise InvalidNameError(
                f"name {whole!r} has the part {part!r}, a Windows device name (con, nul, prn, aux, com1–com9, "
                "lpt1–lpt9, with any extension)"
            )
        if part.endswith("."):
            raise InvalidNameError(f"name {whole!r} has a part ending with '.'; end it with a letter or digit")


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
        # str.isdigit() accepts '²' and int() refuses over 4,300 digits: match ASCII digits of bounded length
        if not _VERSION.fullmatch(number) or not 1 <= int(number) <= MAX_VERSION:
            shown = number if len(number) <= 20 else number[:20] + "…"
            raise InvalidNameError(
                f"reference {_short(text)!r}: the version after '@' must be a number from 1 to {MAX_VERSION}, "
                f"not {shown!r}"
            )
        return Ref(validate_name(name), version=int(number))
    if ":" in text:
        name, _, tag = text.rpartition(":")
        return Ref(validate_name(name), tag=validate_tag(tag))
    return Ref(validate_name(text))


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def validate_version(number: object) -> int:
    """A version number from outside (a manifest, a Hub tag) as an int, or :class:`InvalidNameError`."""
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_VERSION:
        raise InvalidNameError(f"version {_short(repr(number))} is not a number from 1 to {MAX_VERSION}")
    return number


def parse_name_tag(text: str) -> tuple[str, str | None]:
    """``NAME[:TAG]`` as given to ``import --name`` → (name, tag or None)."""
    ref = parse_ref(text)
    if ref.version is not None:
        raise InvalidNameError(f"{text!r}: give a name and optionally a tag (name:tag), not a version")
    return ref.name, ref.tag


def version_ranges(numbers: list[int]) -> str:
    """Version numbers as a user reads them: ``1–4`` for a run, ``1, 3, 7`` otherwise, ``none``."""
    numbers = sorted(numbers)
    if not numbers:
        return "none"
    if numbers == list(range(numbers[0], numbers[-1] + 1)) and len(numbers) > 2:
        return f"{numbers[0]}–{numbers[-1]}"
    return ", ".join(map(str, numbers))
