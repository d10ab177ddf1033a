"""Hostile and malformed safetensors headers: nesting and numbers the JSON parser cannot hold, entries of the wrong
JSON type, lone surrogates, long names, too many tensors, metadata values lorastack interprets (peft configs, kohya
tag frequencies, modelspec strings), and absurd shapes on the structure-only path.

Every outcome is a parsed adapter or a typed one-line error naming the file, quickly and without allocating what the
header claims.
"""

from __future__ import annotations

import json
import math
import struct
import time

import pytest
from reader_helpers import KOHYA, PEFT, assert_refused, lora, outcomes, peft_file, raw_file

from lorastack.adapters import AdapterError, AdapterFileError, InvalidAdapterError, read_adapter
from lorastack.adapters.naming import kohya_to_canonical

# --- nesting and numbers the JSON parser cannot hold -------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "where",
    [
        '{"__metadata__": {"a": ' + DEEP + "}}",
        '{"__metadata__": ' + DEEP + "}",
        '{"x": {"dtype": "F32", "shape": ' + DEEP + ', "data_offsets": [0, 0]}}',
        '{"x": ' + DEEP + "}",
        '{"x": {"dtype": "F32", "shape": [' + "7" * 5000 + '], "data_offsets": [0, 0]}}',
    ],
    ids=["in metadata value", "as metadata", "in shape", "as entry", "5000-digit int"],
)
def test_deep_nesting_and_huge_numbers_in_the_header(where, tmp_path):
    assert_refused(raw_file(tmp_path / "deep.safetensors", {}, header_text=where), AdapterFileError)


@pytest.mark.parametrize("key", ["lora_adapter_metadata", "ss_tag_frequency"])
def test_deep_nesting_inside_metadata_strings(key, tmp_path):
    for value in (DEEP, "[" + "1" * 5000 + "]", "{" * 50_000):
        meta = {key: value}
        path = raw_file(tmp_path / "deep.safetensors", lora(PEFT, kohya=False), metadata=meta)
        results = outcomes(path)
        if key == "ss_tag_frequency":  # shown only: ignored when malformed
            assert all(not isinstance(r, AdapterError) for r in results), results
        else:  # alpha depends on it: refused, naming the key
            assert all(isinstance(r, InvalidAdapterError) and key in str(r) for r in results), results


# --- entries of the wrong JSON type --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [["F32"], {"F32": 1}, 5, None, True, "f32", ""])
def test_dtype_of_the_wrong_type(dtype, tmp_path):
    entries = {**lora(), f"{KOHYA}.alpha": (dtype, [])}
    assert_refused(raw_file(tmp_path / "d.safetensors", entries), AdapterFileError, "dtype")


@pytest.mark.parametrize(
    "shape",
    [[True, 16], [16, True], [2**70], [8, -1], [2.0, 8], ["2", 8], 16, None, [[2], 8], [2**64] * 40],
)
def test_shape_of_the_wrong_type(shape, tmp_path):
    path = raw_file(tmp_path / "s.safetensors", lora())
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    header[f"{KOHYA}.lora_down.weight"]["shape"] = shape
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    assert_refused(path, AdapterFileError, "shape")


@pytest.mark.parametrize("offsets", [[False, True], [0, True], [0], [0, 64, 128], "0-64", [0.0, 64.0], [-64, 0]])
def test_data_offsets_of_the_wrong_type(offsets, tmp_path):
    header = {"x": {"dtype": "F32", "shape": [16], "data_offsets": offsets}}
    assert_refused(raw_file(tmp_path / "o.safetensors", {}, header_text=json.dumps(header)), AdapterFileError)


def test_lone_surrogates_in_names_and_metadata(tmp_path):
    """JSON can spell strings that are not UTF-8; the library refuses them, and so must the structure-only read
    (the registry would fail to store them)."""
    entries = {**lora(), "junk": ("F32", [1])}
    text = json.dumps({"junk\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})
    assert_refused(raw_file(tmp_path / "a.safetensors", {"x": ("F32", [1])}, header_text=text), AdapterFileError)
    path = raw_file(tmp_path / "b.safetensors", entries, metadata={"modelspec.title": "caf\ud800"})
    assert_refused(path, AdapterFileError, "UTF-8")


def test_long_names_are_not_echoed_in_full(tmp_path):
    long = "unet.down_blocks." + "x" * 5000
    path = raw_file(tmp_path / "long.safetensors", {f"{long}.lora_A.weight": ("F32", [2, 8])})
    results = outcomes(path)  # asserts the length bound
    assert all(isinstance(r, InvalidAdapterError) for r in results)


def test_too_many_tensors_are_refused_before_parsing(tmp_path):
    entry = '"k%d": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}'
    text = "{" + ", ".join(entry % i for i in range(200_001)) + "}"
    start = time.perf_counter()
    assert_refused(raw_file(tmp_path / "many.safetensors", {}, header_text=text), AdapterFileError, "tensors")
    assert time.perf_counter() - start < 3


# --- metadata values lorastack interprets ---------------------------------------------------------------------


BAD_PEFT = [
    ("lora_alpha", [1]),
    ("lora_alpha", "8"),
    ("lora_alpha", True),
    ("lora_alpha", {"a": 1}),
    ("lora_alpha", float("nan")),
    ("lora_alpha", float("inf")),
    ("lora_alpha", 10**400),
    ("alpha_pattern", ["attn1.to_q", 4]),
    ("alpha_pattern", "attn1.to_q"),
    ("alpha_pattern", {"attn1.to_q": [4]}),
    ("alpha_pattern", {"attn1.to_q": "4"}),
    ("alpha_pattern", {"attn1.to_q": False}),
    ("alpha_pattern", {"attn1.to_q": float("nan")}),
    ("alpha_pattern", {"attn1.to_q": 10**400}),
    ("r", "4"),
    ("r", True),
    ("r", 0),
    ("r", 2.5),
    ("rank_pattern", [4]),
    ("rank_pattern", {"attn1.to_q": "4"}),
    ("rank_pattern", {"attn1.to_q": -1}),
    ("use_rslora", "false"),
    ("use_rslora", 1),
    ("use_rslora", [True]),
]


@pytest.mark.parametrize("key, value", BAD_PEFT, ids=[f"{k}={str(v)[:12]}" for k, v in BAD_PEFT])
def test_peft_metadata_of_the_wrong_type(key, value, tmp_path):
    config = {"r": 2, "lora_alpha": 4, key: value}
    assert_refused(peft_file(tmp_path / "p.safetensors", config), InvalidAdapterError, rf"unet\.{key}")


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", '"text"', "null", "1e999"])
def test_peft_metadata_that_is_not_a_json_object(raw, tmp_path):
    meta = {"lora_adapter_metadata": raw}
    path = raw_file(tmp_path / "p.safetensors", lora(PEFT, kohya=False), meta)
    assert_refused(path, InvalidAdapterError, "lora_adapter_metadata")


def test_good_peft_metadata_still_gives_alphas(tmp_path):
    config = {"r": 2, "lora_alpha": 4, "alpha_pattern": {"attn1.to_k": 1.5}, "rank_pattern": {}, "use_rslora": None}
    adapter = read_adapter(peft_file(tmp_path / "p.safetensors", config))
    assert adapter.layers[PEFT].alpha == 4 and adapter.layers[PEFT.replace("to_q", "to_k")].alpha == 1.5
    config = {"r": 2, "lora_alpha": 4, "use_rslora": True}
    adapter = read_adapter(peft_file(tmp_path / "p.safetensors", config))
    assert adapter.layers[PEFT].scale == pytest.approx(4 / math.sqrt(2))


@pytest.mark.parametrize(
    "value",
    [
        "[1, 2, 3]",
        '{"a": [1, 2]}',
        '{"a": {"tag": "many"}}',
        '{"a": {"tag": true, "other": 2}}',
        '{"a": {"tag": 1e999}}',
        '{"a": {"tag": ' + "9" * 4000 + "}}",
        "not json",
    ],
)
def test_odd_kohya_tag_frequencies_are_ignored(value, tmp_path):
    path = raw_file(tmp_path / "k.safetensors", lora(), {"ss_tag_frequency": value})
    results = outcomes(path)
    assert all(not isinstance(r, AdapterError) for r in results), results
    tags = results[0].metadata.training["top_tags"]
    assert all(isinstance(t, str) for t in tags)
    if "true" in value:
        assert tags == ["other"]  # a boolean is no count


@pytest.mark.parametrize(
    "meta",
    [
        {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora" + "x" * 5000},
        {"modelspec.architecture": "stable-diffusion-v1\nsecond line"},
        {"ss_base_model_version": "sdxl" + "\u202e" * 3000},
        {"ss_resolution": "(" + "1," * 3000 + ")", "modelspec.trigger_phrase": "," * 5000},
        {"ss_network_args": "{" * 3000, "ss_sd_model_name": "None", "modelspec.tags": "\x00\x01"},
    ],
)
def test_odd_modelspec_and_kohya_strings(meta, tmp_path):
    path = raw_file(tmp_path / "m.safetensors", lora(), meta)
    results = outcomes(path)
    assert all(not isinstance(r, AdapterError) for r in results), results
    for evidence in results[0].probe.evidence:
        assert evidence.isprintable() and len(evidence) < 200, evidence


# --- absurd shapes on the structure-only path -------------------------------------------------------------


ABSURD = [[0, 2**40], [2**40, 0], [0, 2**62, 2**62], [0, 2**63], [0, 2**64], [0] * 70, [1] * 70, [0, 2**31, 2**31]]


@pytest.mark.parametrize("shape", ABSURD, ids=[str(s)[:24] for s in ABSURD])
@pytest.mark.parametrize("role", ["lora_down.weight", "dora_scale", "alpha", "diff", "junk", "embedding"])
def test_absurd_shapes(shape, role, tmp_path):
    if role == "diff":
        entries = {f"{KOHYA}.diff": ("F32", shape)}
    elif role == "junk":
        entries = {**lora(), "junk": ("F32", shape)}
    elif role == "embedding":
        entries = {**lora(), "bundle_emb.tok.clip_l": ("F32", shape)}
    else:
        entries = {**lora(), f"{KOHYA}.{role}": ("F32", shape)}
    results = outcomes(raw_file(tmp_path / "a.safetensors", entries))
    for result in results:
        if not isinstance(result, AdapterError):  # handled: only a key lorastack ignores may be absurd
            assert role == "junk" and math.prod(shape) == 0, result


def test_alpha_of_one_element_in_many_dimensions(tmp_path):
    entries = {**lora(), f"{KOHYA}.alpha": ("F32", [1, 1, 1])}
    adapter = read_adapter(raw_file(tmp_path / "a.safetensors", entries), tensors=False)
    assert adapter.layers["unet.down_blocks.0.attentions.0.proj_in"].alpha is not None


def test_kohya_names_that_split_many_ways_or_are_long(tmp_path):
    start = time.perf_counter()
    assert kohya_to_canonical("lora_unet_" + "_".join(["out_proj_in_layers"] * 40) + "_zz") is None
    assert kohya_to_canonical("lora_unet_" + "_".join(["0"] * 5000)) is None
    assert time.perf_counter() - start < 0.5
    name = "lora_unet_" + "_".join(["out_proj_in_layers"] * 40)
    entries = {f"{name}.lora_down.weight": ("F32", [2, 8]), f"{name}.lora_up.weight": ("F32", [8, 2])}
    outcomes(raw_file(tmp_path / "k.safetensors", entries))
