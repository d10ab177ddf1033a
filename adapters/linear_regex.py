"""A regular-expression matcher that runs in linear time, for patterns taken from adapter files.

Python's ``re`` backtracks and has no time limit: ``(.*)*x`` takes hours on a 60-character module name. The
third-party engines that do not backtrack either are no dependency of lorastack (RE2's bindings) or bound the time
by a timeout (``regex``), which makes the answer depend on the machine. So this module holds a small matcher written
for the purpose: a parser for a subset of Python's syntax and a Thompson NFA, simulated as a lazily built DFA (Pike's
construction, states cached per input character), so the work is linear in the length of the text whatever the
pattern. The subset is what module-name patterns use: literals, ``.``, escapes (``\\.``, ``\\d``, ``\\w``,
``\\s`` and their negations, ``\\n``/``\\t``), classes ``[...]`` with ranges and ``^``, ``*`` ``+`` ``?`` (lazy or
not), counted repeats ``{m,n}`` with m, n ≤ 32, groups ``(...)``/``(?:...)``, ``|``, and the ``^``/``$`` anchors.
Anything else (backreferences, lookaround, flags, possessive repeats, longer repeats, patterns over 1,000
characters) is refused with a :class:`PatternError` naming the pattern; on the subset the answers are those of
``re`` (a property test checks). :mod:`lorastack.adapters.patterns` applies it under peft's rule.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import InvalidAdapterError, shown

MAX_PATTERN_LENGTH = 1000
MAX_REPEAT = 32
MAX_GROUP_DEPTH = 32
#: NFA instructions one key may compile to (counted repeats are expanded).
MAX_PROGRAM = 4000
#: DFA states cached per key before the cache is dropped and rebuilt (bounds memory, not correctness).
MAX_DFA_STATES = 2000
#: Work allowed to one :func:`first_matches` call, in steps (a DFA transition is 1, an NFA closure visit 4).
MAX_STEPS = 10_000_000

SUPPORTED = "literals, ., \\d \\w \\s, [...], * + ?, {m,n} up to 32, (...), (?:...), | and ^ $"


class PatternError(InvalidAdapterError):
    """A pattern from a file that lorastack does not evaluate (outside the supported subset, or too costly)."""


# --- parsing ---------------------------------------------------------------------------------------------------

# AST nodes are tuples: ("lit", ch) ("any",) ("set", negated, chars, ranges, categories) ("bol",) ("eol",)
# ("cat", [nodes]) ("alt", [nodes]) ("rep", node, min, max-or-None)
_CATEGORIES = {
    "d": str.isdecimal,  # what sre's \d is for str patterns (Py_UNICODE_ISDECIMAL)
    "s": str.isspace,  # Py_UNICODE_ISSPACE
    "w": lambda c: c.isalnum() or c == "_",  # Py_UNICODE_ISALNUM or "_"
}
_LETTER_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a"}
_REFUSED_ESCAPES = {
    "b": "a word boundary \\b",
    "B": "a word boundary \\B",
    "A": "an anchor \\A",
    "Z": "an anchor \\Z",
    "x": "a \\x escape",
    "u": "a \\u escape",
    "U": "a \\U escape",
    "N": "a \\N escape",
}
_ASCII_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


class _Refused(Exception):
    """Internal: why a pattern is refused (turned into a PatternError naming it)."""


def _escape(pattern: str, i: int, in_class: bool):
    """The node for the escape at ``pattern[i] == "\\"``; returns ``(node, next index)``."""
    if i + 1 >= len(pattern):
        raise _Refused("ends with a lone backslash")
    c = pattern[i + 1]
    if c.lower() in _CATEGORIES and c in "dDsSwW":
        return ("set", c.isupper(), frozenset(), (), (c.lower(),)), i + 2
    if c in _LETTER_ESCAPES:
        return ("lit", _LETTER_ESCAPES[c]), i + 2
    if c.isdigit() and c in _ASCII_ALNUM:
        raise _Refused("uses a backreference or octal escape \\" + c)
    if c in _REFUSED_ESCAPES:
        what = "a backspace \\b" if in_class and c == "b" else _REFUSED_ESCAPES[c]
        raise _Refused(f"uses {what}")
    if c in _ASCII_ALNUM:
        raise _Refused(f"uses the unknown escape \\{c}")
    return ("lit", c), i + 2


def _parse_class(pattern: str, i: int):
    """The set node for the class opening at ``pattern[i] == "["``; returns ``(node, next index)``."""
    n = len(pattern)
    i += 1
    negated = i < n and pattern[i] == "^"
    if negated:
        i += 1
    first = i
    chars: set[str] = set()
    ranges: list[tuple[str, str]] = []
    categories: list[str] = []
    while True:
        if i >= n:
            raise _Refused("has an unterminated character class [")
        c = pattern[i]
        if c == "]" and i != first:
            return ("set", negated, frozenset(chars), tuple(ranges), tuple(categories)), i + 1
        if c == "[":
            raise _Refused("has [ inside a character class (a possible nested set)")
        if c in "-&~|" and i + 1 < n and pattern[i + 1] == c:
            raise _Refused(f"has {c}{c} inside a character class (a possible set operation)")
        if c == "\\":
            item, i = _escape(pattern, i, in_class=True)
        else:
            item, i = ("lit", c), i + 1
        if i < n and pattern[i] == "-" and i + 1 < n and pattern[i + 1] != "]":
            hi_c = pattern[i + 1]
            if hi_c == "-":
                raise _Refused("has -- inside a character class (a possible set difference)")
            if hi_c == "\\":
                hi, i = _escape(pattern, i + 1, in_class=True)
            else:
                hi, i = ("lit", hi_c), i + 2
            if item[0] != "lit" or hi[0] != "lit" or hi[1] < item[1]:
                raise _Refused("has a bad character range")
            ranges.append((item[1], hi[1]))
            continue
        if item[0] == "lit":
            chars.add(item[1])
        else:
            categories.append(("^" if item[1] else "") + item[4][0])


def _parse_count(pattern: str, i: int) -> tuple[int, int | None, int] | None:
    """``(min, max, next index)`` for a counted repeat ``{m}``, ``{m,}``, ``{,n}``, ``{m,n}`` at ``i``."""
    end = pattern.find("}", i)
    if end < 0:
        return None
    body = pattern[i + 1 : end]
    lo, comma, hi = body.partition(",")
    if not (lo.isdigit() or (comma and lo == "")) or not (hi == "" or hi.isdigit()) or (not lo and not hi):
        return None
    if not all(ch in "0123456789," for ch in body):
        return None
    low = int(lo) if lo else 0
    high = (int(hi) if hi else None) if comma else low
    return low, high, end + 1


def parse(pattern: str):
    """The AST of ``pattern`` (raises :class:`_Refused` outside the subset). Iterative: no recursion limit."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise _Refused(f"is {len(pattern)} characters long; lorastack evaluates at most {MAX_PATTERN_LENGTH}")
    # one frame per open group: (alternatives so far, current sequence)
    stack: list[tuple[list, list]] = [([], [])]
    quantified = False  # the last item was just quantified ("a**" is an error in re)
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        alts, seq = stack[-1]
        if c in "*+?{":
            if c == "{":
                count = _parse_count(pattern, i)
                if count is None:
                    raise _Refused("has a { that is not a counted repeat {m,n}")
                low, high, j = count
                if low > MAX_REPEAT or (high is not None and high > MAX_REPEAT):
                    raise _Refused(f"repeats {pattern[i:j]}; lorastack allows counts up to {MAX_REPEAT}")
                if high is not None and high < low:
                    raise _Refused(f"has the repeat {pattern[i:j]} whose maximum is below its minimum")
            else:
                low, high, j = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c] + (i + 1,)
            if not seq or quantified or seq[-1][0] in ("bol", "eol"):
                raise _Refused("repeats nothing" if not seq or seq[-1][0] != "rep" else "repeats a repeat")
            if j < n and pattern[j] == "+":
                raise _Refused("uses a possessive repeat")
            if j < n and pattern[j] == "?":  # lazy: the same language, so the same yes/no answer
                j += 1
            seq[-1] = ("rep", seq[-1], low, high)
            quantified = True
            i = j
            continue
        quantified = False
        if c == "(":
            if pattern.startswith("(?:", i):
                i += 3
            elif pattern.startswith("(?", i):
                kind = {"=": "a lookahead", "!": "a lookahead", "<": "a lookbehind or named group", "P": "a named "
                        "group", "#": "a comment", ">": "an atomic group", "(": "a conditional"}  # fmt: skip
                raise _Refused(f"uses {kind.get(pattern[i + 2 : i + 3], 'inline flags')} (?…)")
            else:
                i += 1
            if len(stack) - 1 >= MAX_GROUP_DEPTH:
                raise _Refused(f"nests groups more than {MAX_GROUP_DEPTH} deep")
            stack.append(([], []))
            continue
        if c == ")":
            if len(stack) == 1:
                raise _Refused("has an unbalanced )")
            stack.pop()
            stack[-1][1].append(_alternation(alts, seq))
            i += 1
            continue
        if c == "|":
            alts.append(seq)
            stack[-1] = (alts, [])
            i += 1
            continue
        if c == "[":
            node, i = _parse_class(pattern, i)
        elif c == "\\":
            node, i = _escape(pattern, i, in_class=False)
        else:
            node = {".": ("any",), "^": ("bol",), "$": ("eol",)}.get(c, ("lit", c))
            i += 1
        seq.append(node)
    if len(stack) != 1:
        raise _Refused("has an unbalanced (")
    return _alternation(*stack[0])


def _alternation(alts: list, seq: list):
    options = [("cat", s) for s in [*alts, seq]]
    return options[0] if len(options) == 1 else ("alt", options)


# --- compiling: a Thompson NFA as a list of instructions -----------------------------------------------------

# instructions: ("c", predicate) consumes one character; ("s", x, y) splits; ("j", x) jumps;
# ("a", "bol"|"eol") asserts a position; ("m",) matches.


def _set_predicate(negated: bool, chars: frozenset, ranges: tuple, categories: tuple):
    tests = []
    for cat in categories:
        test = _CATEGORIES[cat.lstrip("^")]
        tests.append((lambda t: lambda ch: not t(ch))(test) if cat.startswith("^") else test)

    def member(ch: str) -> bool:
        inside = ch in chars or any(lo <= ch <= hi for lo, hi in ranges) or any(t(ch) for t in tests)
        return inside != negated

    return member


class _Compiler:
    def __init__(self):
        self.prog: list[tuple] = []

    def emit(self, instr: tuple) -> int:
        if len(self.prog) >= MAX_PROGRAM:
            raise _Refused(f"expands to more than {MAX_PROGRAM} NFA states (counted repeats multiply)")
        self.prog.append(instr)
        return len(self.prog) - 1

    def node(self, node) -> None:
        kind = node[0]
        if kind == "lit":
            self.emit(("c", node[1].__eq__))
        elif kind == "any":
            self.emit(("c", "\n".__ne__))
        elif kind == "set":
            self.emit(("c", _set_predicate(*node[1:])))
        elif kind in ("bol", "eol"):
            self.emit(("a", kind))
        elif kind == "cat":
            for child in node[1]:
                self.node(child)
        elif kind == "alt":
            jumps = []
            options = node[1]
            for k, child in enumerate(options):
                if k < len(options) - 1:
                    split = self.emit(("s", 0, 0))
                    self.node(child)
                    jumps.append(self.emit(("j", 0)))
                    self.prog[split] = ("s", split + 1, len(self.prog))
                else:
                    self.node(child)
            for j in jumps:
                self.prog[j] = ("j", len(self.prog))
        else:  # rep
            _, child, low, high = node
            for _ in range(low):
                self.node(child)
            if high is None:
                split = self.emit(("s", 0, 0))
                self.node(child)
                self.emit(("j", split))
                self.prog[split] = ("s", split + 1, len(self.prog))
            else:
                for _ in range(high - low):
                    split = self.emit(("s", 0, 0))
                    self.node(child)
                    self.prog[split] = ("s", split + 1, len(self.prog))


class _Budget:
    def __init__(self, steps: int, what: str):
        self.steps = self.left = steps
        self.what = what

    def spend(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise PatternError(f"{self.what} take over {self.steps:,} steps to evaluate; use fewer or simpler keys")


_UNLIMITED = _Budget(1 << 62, "patterns")


class _State:
    """A DFA state: the NFA instructions live at one position (consuming ones, the match, blocked assertions)."""

    __slots__ = ("accepts_at_end", "final", "next", "pcs")

    def __init__(self, pcs: frozenset, accepts: bool):
        self.pcs = pcs
        self.next: dict[str, _State] = {}
        # True: the match is reachable here whatever follows; False: nothing can match any more; None: go on
        self.final = True if accepts else (False if not pcs else None)
        self.accepts_at_end: bool | None = None


def _common_prefix(a: str, b: str) -> int:
    """Length of the common beginning of two strings, by slice comparisons (no loop over characters)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class Regex:
    """A pattern of the supported subset, answering like ``re.match(pattern, text) is not None``."""

    def __init__(self, pattern: str, what: str = "pattern"):
        self.pattern = pattern
        try:
            self._compile(parse(pattern))
        except _Refused as e:
            raise PatternError(f"{what} {shown(pattern)} {e}; lorastack evaluates {SUPPORTED}") from None

    def _compile(self, ast) -> None:
        compiler = _Compiler()
        compiler.node(ast)
        self._match_pc = compiler.emit(("m",))
        self._prog = compiler.prog
        self._states: dict[frozenset, _State] = {}
        self._start = self._state(self._close((0,), True, False, _UNLIMITED))

    # the NFA closure: every instruction reachable without consuming a character
    def _close(self, pcs, bol: bool, eol: bool, budget: _Budget) -> frozenset:
        prog, out, seen, todo = self._prog, set(), set(), list(pcs)
        while todo:
            pc = todo.pop()
            if pc in seen:
                continue
            seen.add(pc)
            instr = prog[pc]
            op = instr[0]
            if op == "s":
                todo.append(instr[2])
                todo.append(instr[1])
            elif op == "j":
                todo.append(instr[1])
            elif op == "a":
                if bol if instr[1] == "bol" else eol:
                    todo.append(pc + 1)
                else:
                    out.add(pc)  # blocked here; a later re-closure with the position known may pass it
            else:
                out.add(pc)
        budget.spend(4 * len(seen))
        return frozenset(out)

    def _state(self, pcs: frozenset) -> _State:
        state = self._states.get(pcs)
        if state is None:
            if len(self._states) >= MAX_DFA_STATES:  # bound the cache; live states stay valid
                for old in self._states.values():
                    old.next = {}
                self._states = {}
            state = self._states[pcs] = _State(pcs, self._match_pc in pcs)
        return state

    def _successors(self, pcs, ch: str) -> list[int]:
        prog = self._prog
        return [pc + 1 for pc in pcs if prog[pc][0] == "c" and prog[pc][1](ch)]

    def _step(self, state: _State, ch: str, budget: _Budget) -> _State:
        nxt = state.next.get(ch)
        if nxt is None:
            nxt = self._state(self._close(self._successors(state.pcs, ch), False, False, budget))
            state.next[ch] = nxt
        return nxt

    def _at_end(self, state: _State, budget: _Budget) -> bool:
        if state.accepts_at_end is None:
            state.accepts_at_end = self._match_pc in self._close(state.pcs, False, True, budget)
        return state.accepts_at_end

    def _final_newline(self, state: _State, at_start: bool, budget: _Budget) -> bool:
        """The last character is a newline, before which ``$`` holds too: finish the text there by hand."""
        here = self._close(state.pcs, at_start, True, budget)
        if self._match_pc in here:
            return True
        return self._match_pc in self._close(self._successors(here, "\n"), False, True, budget)

    def match(self, text: str, budget: _Budget = _UNLIMITED) -> bool:
        """``re.match(pattern, text) is not None``, in time linear in ``len(text)``."""
        return self.match_many([text], budget)[0]

    def match_many(self, texts: Sequence[str], budget: _Budget = _UNLIMITED) -> list[bool]:
        """:meth:`match` for each text; texts that share a beginning share the work (module names do)."""
        results = [False] * len(texts)
        order = sorted(range(len(texts)), key=texts.__getitem__)
        path: list[_State] = [self._start]  # path[k]: the state after k characters of ``previous``
        first_final = 0 if self._start.final is not None else None  # where the path became final
        previous = ""
        for index in order:
            text = texts[index]
            n = len(text)
            if n == 0:
                results[index] = self._match_pc in self._close((0,), True, True, budget)
                continue
            common = min(_common_prefix(previous, text), len(path) - 1)
            del path[common + 1 :]
            if first_final is not None and first_final > common:
                first_final = None
            final_newline = text[-1] == "\n"
            stop = n - 1 if final_newline else n
            state = path[-1]
            if first_final is None:
                budget.spend(stop - common)
                step = self._step
                for ch in text[common:stop]:
                    nxt = state.next.get(ch)
                    state = step(state, ch, budget) if nxt is None else nxt
                    path.append(state)
                    if state.final is not None:
                        first_final = len(path) - 1
                        break
            previous = text[: len(path) - 1]
            if first_final is not None:
                results[index] = path[first_final].final
            elif final_newline:
                results[index] = self._final_newline(state, n == 1, budget)
            else:
                results[index] = self._at_end(state, budget)
        return results
