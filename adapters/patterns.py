"""Module-name patterns taken from adapter files (peft's ``alpha_pattern`` keys), matched in linear time.

peft decides which ``alpha_pattern`` entry applies to a module with ``re.match(rf"(.*\\.)?({key})$", name)``,
the first key in order that matches winning (``get_pattern_key`` in ``peft/utils/other.py``, peft 0.21; its
``rank_pattern``/``alpha_pattern`` check in ``tuners/tuners_utils.py`` uses the same expression). lorastack keeps
that rule, and also lets a key match when it equals the module name or a dot-separated tail of it.

The keys come from the file, so they are hostile input: they are evaluated by the linear-time matcher of
:mod:`lorastack.adapters.linear_regex`, never by Python's backtracking ``re``, and the whole evaluation is bounded
in steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import shown
from .linear_regex import (
    MAX_PATTERN_LENGTH,
    MAX_STEPS,
    SUPPORTED,
    PatternError,
    Regex,
    _Budget,
    _Refused,
    parse,
)

# --- peft's rule ---------------------------------------------------------------------------------------------

_METACHARACTERS = frozenset(".^$*+?{}[]\\|()")


@dataclass(frozen=True)
class _Fixed:
    """A key whose only special character is ``.``: it matches a tail of the name of its own length."""

    length: int
    runs: tuple[tuple[int, str], ...]  # (offset, text) of the literal runs between the dots
    dots: tuple[int, ...]
    tail: str  # the literal run at the end ("" when the key ends with a dot)

    @classmethod
    def of(cls, key: str) -> _Fixed:
        runs, offset = [], 0
        for part in key.split("."):
            if part:
                runs.append((offset, part))
            offset += len(part) + 1
        dots = tuple(i for i, c in enumerate(key) if c == ".")
        return cls(len(key), tuple(runs), dots, key[key.rfind(".") + 1 :])

    def fits(self, segment: str) -> bool:
        """``segment`` (of the key's length) matches: the literal runs equal, the dots any character but "\\n"."""
        if not all(segment.startswith(text, offset) for offset, text in self.runs):
            return False
        return "\n" not in segment or all(segment[p] != "\n" for p in self.dots)


class PeftKey:
    """An ``alpha_pattern``/``rank_pattern`` key under peft's rule (see the module docstring)."""

    def __init__(self, key: str, what: str = "pattern"):
        self.key = key
        self.what = what
        fixed = not (_METACHARACTERS - {"."}) & set(key) and "\n" not in key
        if fixed and len(key) <= MAX_PATTERN_LENGTH:  # nothing to refuse: a literal with "." wildcards
            self.fixed: _Fixed | None = _Fixed.of(key)
            self._regex: Regex | None = None
        else:
            self.fixed = None
            # (.*\.)?(KEY)$ as peft builds it, composed on the parsed key (so "a)|(b" cannot escape the group)
            self._regex = _Composed(key, what)

    @property
    def regex(self) -> Regex:
        """peft's ``(.*\\.)?(KEY)$``."""
        if self._regex is None:
            self._regex = _Composed(self.key, self.what)
        return self._regex

    def matches(self, name: str) -> bool:
        return first_matches([self], [name])[0] == 0


class _Composed(Regex):
    """``(?:.*\\.)?(?:KEY)$`` compiled from the key's AST."""

    def __init__(self, key: str, what: str = "pattern"):
        self.pattern = key
        try:
            prefix = ("rep", ("cat", [("rep", ("any",), 0, None), ("lit", ".")]), 0, 1)
            self._compile(("cat", [prefix, parse(key), ("eol",)]))
        except _Refused as e:
            raise PatternError(f"{what} {shown(key)} {e}; lorastack evaluates {SUPPORTED}") from None
        self._last = self._last_consumers()
        self._ends: dict[str, bool] = {}

    def _last_consumers(self) -> list:
        """The tests of the instructions that can consume the last character of a match (a match of two or more
        characters ends at the end of the text or before a final newline, so the last one is known)."""
        into: dict[int, list[int]] = {}
        for pc, instr in enumerate(self._prog):
            targets = {"s": instr[1:], "j": instr[1:], "a": (pc + 1,) if instr[1:] == ("eol",) else ()}
            for target in targets.get(instr[0], ()):
                into.setdefault(target, []).append(pc)
        reached, todo = {self._match_pc}, [self._match_pc]
        while todo:
            for source in into.get(todo.pop(), ()):
                if source not in reached:
                    reached.add(source)
                    todo.append(source)
        return [instr[1] for pc, instr in enumerate(self._prog) if instr[0] == "c" and pc + 1 in reached]

    def may_match(self, name: str) -> bool:
        """A quick necessary condition: the character a match would end with can end one."""
        if len(name) < 2:
            return True
        return self._can_end(name[-1]) or (name[-1] == "\n" and self._can_end(name[-2]))

    def _can_end(self, ch: str) -> bool:
        known = self._ends.get(ch)
        if known is None:
            known = self._ends[ch] = any(test(ch) for test in self._last)
        return known


class _Names:
    """The module names matched against, indexed so that a literal key looks only at the names it may match."""

    TAIL = 4

    def __init__(self, names: Sequence[str]):
        self.names = names
        self.by_segment: dict[str, list[int]] = {}  # the last dot-separated segment → names ending with it
        self.by_tail: dict[str, list[int]] = {}  # the last TAIL characters (before a final newline too) → names
        for i, name in enumerate(names):
            self.by_segment.setdefault(name[name.rfind(".") + 1 :], []).append(i)
            tails = {name[-self.TAIL :]}
            if name.endswith("\n"):
                tails.add(name[-self.TAIL - 1 : -1])
            for tail in tails:
                self.by_tail.setdefault(tail, []).append(i)

    def literal_hits(self, key: str, budget: _Budget) -> list[int]:
        """Names equal to ``key`` or ending with ``"." + key`` (lorastack's literal rule)."""
        candidates = self.by_segment.get(key[key.rfind(".") + 1 :], ())
        budget.spend(len(candidates))
        dotted = "." + key
        return [i for i in candidates if self.names[i] == key or self.names[i].endswith(dotted)]

    def fixed_hits(self, fixed: _Fixed, budget: _Budget) -> list[int]:
        """Names peft's regex matches for a key whose only special character is ``.``: a tail of the key's length
        (the whole name, or after a dot with no newline before it; at the end or before a final newline) fits."""
        if len(fixed.tail) >= self.TAIL:
            candidates: Sequence[int] = self.by_tail.get(fixed.tail[-self.TAIL :], ())
        else:
            candidates = range(len(self.names))
        budget.spend(len(candidates) * (1 + len(fixed.runs)))
        hits = []
        for i in candidates:
            name = self.names[i]
            n = len(name)
            for end in (n, n - 1) if name.endswith("\n") else (n,):
                start = end - fixed.length
                if start < 0 or (start > 0 and (name[start - 1] != "." or "\n" in name[: start - 1])):
                    continue
                if fixed.fits(name[start:end]):
                    hits.append(i)
                    break
        return hits


def first_matches(
    keys: Sequence[str | PeftKey], names: Sequence[str], what: str = "pattern", max_steps: int = MAX_STEPS
) -> list[int | None]:
    """For each module name, the index of the first key that matches it under peft's rule, or ``None``.

    Every key is checked first (a :class:`PatternError` names the first one lorastack does not evaluate), and the
    whole evaluation is bounded by ``max_steps`` (a :class:`PatternError` when it would take more).
    """
    compiled = [k if isinstance(k, PeftKey) else PeftKey(k, what) for k in keys]
    budget = _Budget(max_steps, f"{what}s ({len(compiled)} against {len(names)} module names)")
    result: list[int | None] = [None] * len(names)
    if not names:
        return result
    index = _Names(names)
    remaining = sorted(range(len(names)), key=names.__getitem__)
    for j, key in enumerate(compiled):
        if not remaining:
            break
        hits = set(index.literal_hits(key.key, budget))
        if key.fixed is not None:
            hits.update(index.fixed_hits(key.fixed, budget))
        else:
            composed = key.regex
            open_ids = [i for i in remaining if i not in hits and composed.may_match(names[i])]
            budget.spend(len(remaining))
            matched = composed.match_many([names[i] for i in open_ids], budget)
            hits.update(i for i, hit in zip(open_ids, matched, strict=True) if hit)
        hits = {i for i in hits if result[i] is None}
        if hits:
            for i in hits:
                result[i] = j
            remaining = [i for i in remaining if result[i] is None]
    return result
