"""Showing untrusted text on a terminal: metadata comes from downloaded files, and a terminal obeys what it prints.

A NUL or an escape sequence can rewrite the screen, and bidirectional controls (U+202E RIGHT-TO-LEFT OVERRIDE, …)
make ``evil‮fdp.exe`` display as ``evilexe.pdf``. Human-readable output shows such characters as ``\\u202e``
escapes; ``--json`` output is escaped by the JSON encoder already.
"""

from __future__ import annotations

import unicodedata

#: Unicode's bidirectional formatting characters (embeddings, overrides, isolates, marks).
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unsafe(char: str) -> bool:
    if char in BIDI_CONTROLS:
        return True
    category = unicodedata.category(char)
    return category in ("Cc", "Cs", "Co", "Cn") or (category == "Cf" and char not in "\u200d")


def printable(value: object) -> str:
    """``value`` as text with control, bidirectional-override and unassigned characters written as escapes."""
    text = value if isinstance(value, str) else str(value)
    if all(char.isprintable() and char not in BIDI_CONTROLS for char in text):
        return text
    return "".join(
        (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
        if _unsafe(c)
        else c
        for c in text
    )
