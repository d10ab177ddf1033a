"""Patterns taken from adapter files (peft's ``alpha_pattern`` and ``rank_pattern``): the linear-time matcher agrees
with Python's ``re`` and peft's rule, refuses what it does not support naming the pattern, and bounds its work on
patterns catastrophic for a backtracking engine.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reader_helpers import MESSAGE_LIMIT, PEFT, assert_refused, lora, peft_file, raw_file

from lorastack.adapters import InvalidAdapterError, read_adapter

# --- patterns taken from a file -----------------------------------------------------------------------------

ALPHABET = "ab._0 \né٣"
ATOMS = ["a", "b", "_", "0", "é", " ", "\\.", ".", "\\d", "\\w", "\\s", "\\D", "\\W", "\\S", "[ab]", "[^a.]",
         "[a-c_]", "[\\d.]", "[^\\s]", "[]a]", "[-.]", "\\\\", "\\n", "}", "]"]  # fmt: skip
QUANTIFIERS = ["", "", "", "*", "+", "?", "*?", "+?", "??", "{2}", "{1,2}", "{0,}", "{,2}", "{0}", "{2,3}?"]


def _patterns():
    atom = st.sampled_from(ATOMS)
    quantified = st.tuples(atom, st.sampled_from(QUANTIFIERS)).map("".join)

    def extend(inner):
        group = st.tuples(st.sampled_from(["(", "(?:"]), inner, st.sampled_from(QUANTIFIERS)).map(
            lambda t: f"{t[0]}{t[1]}){t[2]}"
        )
        seq = st.lists(st.one_of(quantified, group), max_size=4).map("".join)
        return st.one_of(seq, st.lists(seq, min_size=2, max_size=3).map("|".join))

    body = st.recursive(quantified, extend, max_leaves=8)
    return st.tuples(st.sampled_from(["", "", "^"]), body, st.sampled_from(["", "", "$"])).map("".join)


# short texts: the oracle is the backtracking engine, exponential on some generated patterns
@settings(
    max_examples=600, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(_patterns(), st.lists(st.text(ALPHABET, max_size=6), min_size=1, max_size=6))
def test_the_matcher_agrees_with_python_re(pattern, strings):
    from lorastack.adapters.patterns import PeftKey, Regex, first_matches

    compiled = Regex(pattern)
    expected = [re.match(pattern, s) is not None for s in strings]
    assert [compiled.match(s) for s in strings] == expected
    assert compiled.match_many(strings) == expected
    key = PeftKey(pattern)
    peft = [s == pattern or s.endswith("." + pattern) or re.match(rf"(.*\.)?({pattern})$", s) is not None
            for s in strings]  # fmt: skip
    assert [key.matches(s) for s in strings] == peft
    assert first_matches([pattern], strings) == [0 if m else None for m in peft]


def _peft_first(keys, path):
    """peft's get_pattern_key, with lorastack's literal rule in front (the oracle: fine for harmless patterns)."""
    for i, key in enumerate(keys):
        if path == key or path.endswith("." + key) or re.match(rf"(.*\.)?({key})$", path):
            return i
    return None


def test_module_paths_and_dotted_literals():
    from lorastack.adapters.patterns import PeftKey, first_matches

    paths = [PEFT, "down_blocks.0.attentions.0.proj_in", "mid_block.attentions.0.proj_out", "a.b\nc", "xattn1.to_q"]
    keys = ["attn1.to_q", "attentions.0.proj_in", "down_blocks", "^mid_block.*", "b.c", "attn1.to_q$", "to_.", "."]
    for key in keys:
        expected = [p == key or p.endswith("." + key) or re.match(rf"(.*\.)?({key})$", p) is not None for p in paths]
        assert [PeftKey(key).matches(p) for p in paths] == expected, key
    assert first_matches(keys, paths) == [_peft_first(keys, p) for p in paths]
    many = [f"down_blocks.{i}.attentions.{j}.proj_in" for i in range(4) for j in range(3)] + ["x.y", "mid_block."]
    assert first_matches(many, paths + many) == [_peft_first(many, p) for p in paths + many]


UNSUPPORTED = [
    "(a)\\1",
    "(?=a)",
    "(?!a)b",
    "(?<=a)b",
    "(?<!a)b",
    "(?i)a",
    "(?P<n>a)",
    "(?>a)",
    "a{33}",
    "a{1,1000}",
    "a*+",
    "a**",
    "*a",
    "^*",
    "\\bfoo",
    "\\x41",
    "[[]",
    "a{",
    "(a",
    "a)",
    "a\\",
    "[a",
    "[z-a]",
    "[\\d-z]",
    "(" * 60 + ")" * 60,
    "((a{32}){32}){32}",
    "x" * 1001,
]


@pytest.mark.parametrize("pattern", UNSUPPORTED, ids=[p[:16] for p in UNSUPPORTED])
def test_unsupported_patterns_are_refused_naming_them(pattern):
    from lorastack.adapters.patterns import PatternError, PeftKey

    with pytest.raises(PatternError) as info:
        PeftKey(pattern)
    message = str(info.value)
    assert isinstance(info.value, InvalidAdapterError) and "\n" not in message and len(message) < MESSAGE_LIMIT
    assert pattern[:20].encode("unicode_escape").decode() in message.encode("unicode_escape").decode()


# catastrophic for a backtracking engine on the paths below; none matches any of them
EVIL = ["(.*)*x", "(a+)+$", "(a|a)*b", "(a|aa)+$", "((a*)*)*c", "(.*.*)*#", "([a-z_.0-9]+)+#", "(\\w|\\.)*#",
        "(x+x+)+y", "(.*\\.)*##"]  # fmt: skip
EVIL_KEYS = [key + "z" * (i // len(EVIL)) for i, key in enumerate(EVIL * 10)]  # 100 distinct patterns


def _unet_paths(n):
    paths = []
    for i in range(n):
        block, attn, proj = divmod(i, 40)[0] % 4, i % 3, ["to_q", "to_k", "to_v", "to_out.0"][i % 4]
        paths.append(f"down_blocks.{block}.attentions.{attn}.transformer_blocks.{i}.attn{1 + i % 2}.{proj}")
    return [*paths, "down_blocks." + "a" * 60 + "!", "mid_block." + "x" * 60 + "!"]


def test_evil_patterns_finish_quickly():
    from lorastack.adapters.patterns import first_matches

    paths = _unet_paths(1000)
    start = time.perf_counter()
    assert first_matches(EVIL_KEYS, paths) == [None] * len(paths)
    assert time.perf_counter() - start < 1.0


def test_a_file_with_evil_alpha_patterns_reads_quickly(tmp_path):
    paths = _unet_paths(300)
    entries = {}
    for p in paths:
        entries.update(lora(f"unet.{p}", kohya=False))
    config = {"unet.r": 2, "unet.lora_alpha": 4, "unet.alpha_pattern": {k: 1.0 for k in EVIL_KEYS}}
    path = raw_file(tmp_path / "evil.safetensors", entries, {"lora_adapter_metadata": json.dumps(config)})
    start = time.perf_counter()
    adapter = read_adapter(path, tensors=False)
    assert time.perf_counter() - start < 3.0
    assert adapter.alphas() == [4.0]


def test_unsupported_alpha_pattern_in_a_file_names_it(tmp_path):
    config = {"r": 2, "lora_alpha": 4, "alpha_pattern": {"attn1\\.to_(?=q)": 2}}
    assert_refused(peft_file(tmp_path / "p.safetensors", config), InvalidAdapterError, r"alpha_pattern.*to_\(\?=q\)")


def test_the_work_on_patterns_is_bounded():
    from lorastack.adapters.patterns import PatternError, first_matches

    keys = [f"(.*)*#{'z' * i}q" for i in range(200)]  # each has to run on every name that ends with q
    with pytest.raises(PatternError, match=r"200 against 1002 module names\) take over 100,000 steps"):
        first_matches(keys, _unet_paths(1000), max_steps=100_000)
