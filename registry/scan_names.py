"""Names for scanned files: the file stem, namespaced by its folder, tidied to the name rules of registry/names.py.

``Lora/characters/Anime Girl (v2).safetensors`` scanned from ``Lora`` becomes ``characters/Anime-Girl-v2``; a file
at the top of the root has no namespace. A folder deeper than one level joins its parts with ``-`` (a name has one
``/`` at most). ``--namespace NS`` puts every file under ``NS``. A name already taken (case-insensitively) gets a
suffix ``-2``, ``-3``…: a scan never adds versions to another file's adapter.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from .errors import InvalidNameError
from .names import RESERVED_NAMES, WINDOWS_DEVICES, validate_name

#: Lengths of the two parts (a name is at most 200 characters, and a suffix must fit).
MAX_NAMESPACE = 80
MAX_STEM = 100
#: Suffixes tried before a clash is given the file's hash instead.
MAX_SUFFIX = 1000


def tidy(text: str, fallback: str) -> str:
    """``text`` as one name part: letters, digits, ``.``, ``_``, ``-``; ``fallback`` when nothing is left."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    part = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_text)
    part = re.sub(r"\.{2,}", ".", re.sub(r"-{2,}", "-", part)).strip("-._")
    if not part:
        return fallback
    if part.split(".", 1)[0].lower() in WINDOWS_DEVICES or part.lower() in RESERVED_NAMES:
        part += "-lora"
    return part


def base_name(path: Path, root: Path, namespace: str | None, sha256: str) -> str:
    """The name a file would get before clashes are resolved."""
    stem = tidy(path.name[: -len(path.suffix)] if path.suffix else path.name, f"adapter-{sha256[:8]}")
    stem = stem[:MAX_STEM].rstrip("-._") or f"adapter-{sha256[:8]}"
    if namespace is None:
        try:
            folders = path.parent.relative_to(root).parts
        except ValueError:
            folders = ()
        namespace = "-".join(tidy(p, "") for p in folders if tidy(p, "")) or None
    if namespace:
        namespace = namespace[:MAX_NAMESPACE].rstrip("-._")
    return f"{namespace}/{stem}" if namespace else stem


def check_namespace(namespace: str | None) -> str | None:
    """``--namespace`` as given: one valid name part, or :class:`InvalidNameError` naming the rule."""
    if namespace is None:
        return None
    if "/" in namespace:
        raise InvalidNameError(
            f"--namespace {namespace!r} contains '/'; a namespace is one part (letters, digits, .-_)"
        )
    validate_name(f"{namespace}/x")
    if len(namespace) > MAX_NAMESPACE:
        raise InvalidNameError(f"--namespace {namespace[:40]!r}… is longer than {MAX_NAMESPACE} characters")
    return namespace


def unique_name(base: str, taken) -> str:
    """``base``, or ``base-2``, ``base-3``… : the first that ``taken(name)`` says is free."""
    for n in range(1, MAX_SUFFIX + 1):
        name = base if n == 1 else f"{base}-{n}"
        if not taken(name):
            return validate_name(name)
    raise InvalidNameError(f"{base}: {MAX_SUFFIX} adapters already have this name or a numbered one")
