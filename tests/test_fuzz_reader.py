"""Structure-aware fuzzing of the reader: generated safetensors headers and tensor tables, in the key grammars of
kohya, peft/diffusers and LyCORIS (and junk), with dtypes (fp8 and invalid ones too), shapes (0 and huge), data
offsets (consistent or not) and the metadata lorastack interprets (random JSON in it). Every outcome of every
read must be an Adapter or an AdapterError whose one-line message starts with the path, within a time bound.

Run with ``-s`` to see the tally of outcomes.
"""

from __future__ import annotations

import json
import math
import random
import struct
import time
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorastack.adapters import AdapterError, inspect_file, read_adapter
from lorastack.adapters.files import DTYPES

EXAMPLES = 1000
TIME_BOUND = 2.0  # seconds, per read
OUTCOMES: Counter = Counter()
SLOWEST = [0.0]

# --- key grammars --------------------------------------------------------------------------------------------

UNET_MODULES = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k",
    "up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_v",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "mid_block.attentions.0.proj_in",
    "down_blocks.0.attentions.0.proj_out",
    "down_blocks.0.resnets.0.conv1",
    "up_blocks.2.upsamplers.0.conv",
    "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
    "add_embedding.linear_1",
    "conv_in",
]
SGM_MODULES = ["input_blocks.4.1.proj_in", "output_blocks.3.1.transformer_blocks.1.attn1.to_q",
               "middle_block.1.proj_out", "input_blocks.1.0.in_layers.2", "label_emb.0.0", "out.2"]  # fmt: skip
TE_MODULES = ["text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.11.mlp.fc1",
              "encoder.layers.13.self_attn.out_proj", "text_model.encoder.layers.31.self_attn.k_proj"]  # fmt: skip
KOHYA_SUFFIXES = ["lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha", "dora_scale", "hada_w1_a",
                  "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "lokr_w1", "lokr_w1_a", "lokr_w1_b",
                  "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "diff", "diff_b", "bogus"]  # fmt: skip
PEFT_SUFFIXES = ["lora_A.weight", "lora_B.weight", "lora.down.weight", "lora.up.weight", "lora_magnitude_vector",
                 "lora_magnitude_vector.weight", "lora_linear_layer.down.weight", "lora_A.default.weight",
                 "lora_B.default.weight", "alpha", "weight"]  # fmt: skip
LAYER_KINDS = {
    "lora": ["lora_down.weight", "lora_up.weight", "alpha"],
    "locon-tucker": ["lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha"],
    "dora": ["lora_down.weight", "lora_up.weight", "alpha", "dora_scale"],
    "loha": ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"],
    "lokr": ["lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"],
    "full": ["diff", "diff_b"],
    "peft": ["lora_A.weight", "lora_B.weight"],
}
JUNK = st.one_of(
    st.sampled_from(["model.diffusion_model.input_blocks.0.0.weight", "emb_params", "string_to_param.*", "clip_g",
                     "bundle_emb.tok.clip_l", "bundle_emb.<x>.string_to_param.*", "bundle_emb.bad token.clip_l",
                     "down_blocks.0.resnets.0.conv1.weight", "__metadata__x", "", "unet.", "lora_unet_", "\n"]),
    st.text(max_size=12),
    st.text(alphabet="lora_unet_tedownblocks01.", max_size=40),
    st.integers(0, 3).map(lambda n: "unet.down_blocks." + "a" * (10**n) + ".lora_A.weight"),
)  # fmt: skip


@st.composite
def module_key(draw, kohya: bool):
    if kohya:
        prefix = draw(st.sampled_from(["lora_unet_", "lora_te_", "lora_te1_", "lora_te2_"]))
        pool = UNET_MODULES + SGM_MODULES if prefix == "lora_unet_" else TE_MODULES
        return prefix + draw(st.sampled_from(pool)).replace(".", "_")
    prefix = draw(st.sampled_from(["unet.", "text_encoder.", "text_encoder_2.", "", "base_model.model.unet."]))
    pool = TE_MODULES if prefix.startswith("text") else UNET_MODULES
    return prefix + draw(st.sampled_from(pool))


DIM = st.one_of(
    st.integers(1, 8),
    st.integers(1, 8),
    st.sampled_from([0, 2**40, 2**62, 2**63, 2**64, -1]),
)
SHAPE = st.one_of(
    st.lists(st.integers(1, 8), min_size=0, max_size=4),
    st.lists(DIM, min_size=0, max_size=4),
    st.sampled_from([[0, 2**40], [2**40, 0], [0, 2**62, 2**62], [1] * 12, [True, 4], [2.0], "4", None]),
)
DTYPE = st.one_of(
    st.sampled_from(["F32"] * 6 + ["F16", "BF16", "F8_E4M3", "F8_E5M2", "F64"]),
    st.sampled_from(["I32", "I64", "U8", "BOOL", "U16", "X9", "f32", "", 5, ["F32"], {"F32": 1}, None]),
)


def plausible_shapes(kind: str, rank: int, n_out: int, n_in: int) -> dict[str, list[int]]:
    return {
        "lora_down.weight": [rank, n_in],
        "lora_up.weight": [n_out, rank],
        "lora_mid.weight": [rank, rank, 3, 3],
        "alpha": [],
        "dora_scale": [n_out],
        "hada_w1_a": [n_out, rank],
        "hada_w1_b": [rank, n_in],
        "hada_w2_a": [n_out, rank],
        "hada_w2_b": [rank, n_in],
        "lokr_w1": [2, 2],
        "lokr_w2_a": [max(n_out // 2, 1), rank],
        "lokr_w2_b": [rank, max(n_in // 2, 1)],
        "diff": [n_out, n_in],
        "diff_b": [n_out],
        "lora_A.weight": [rank, n_in],
        "lora_B.weight": [n_out, rank],
    }


def _rng(draw) -> random.Random:
    # for how often something happens: hypothesis favours its simplest choices, which would make every rare case
    # (a missing part, a bent shape) common
    return random.Random(draw(st.integers(0, 2**32 - 1)))


@st.composite
def tensor_table(draw):
    """``[(name, dtype, shape)]``: a few layers in one grammar, some shapes bent, plus junk entries."""
    rng = _rng(draw)
    kohya = draw(st.booleans())
    entries, bases = [], set()
    for _ in range(rng.choice([0, 1, 1, 2, 2, 3, 3])):
        kind = "peft" if not kohya and rng.random() < 0.7 else draw(st.sampled_from(sorted(LAYER_KINDS)))
        base = draw(module_key(kohya and kind != "peft"))
        if base in bases and rng.random() < 0.9:
            continue  # two layers on one module: now and then
        bases.add(base)
        dtype = draw(DTYPE) if rng.random() < 0.05 else rng.choice(["F32", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"])
        shapes = plausible_shapes(kind, draw(st.integers(1, 4)), draw(st.integers(1, 8)), draw(st.integers(1, 8)))
        for suffix in LAYER_KINDS[kind]:
            if rng.random() < 0.05:
                continue  # a part missing
            shape = draw(SHAPE) if rng.random() < 0.06 else shapes[suffix]
            sep = "." if kohya or kind == "peft" else draw(st.sampled_from([".", "_"]))
            entries.append((f"{base}{sep}{suffix}", "F32" if suffix == "alpha" else dtype, shape))
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2])):
        name = draw(st.one_of(JUNK, st.builds("{}.{}".format, module_key(kohya), st.sampled_from(
            KOHYA_SUFFIXES if kohya else PEFT_SUFFIXES))))  # fmt: skip
        dtype = draw(DTYPE) if rng.random() < 0.2 else "F32"
        entries.append((name, dtype, draw(SHAPE) if rng.random() < 0.3 else [rng.randint(0, 4)]))
    return entries


# --- metadata --------------------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_subnormal=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
PATTERN_KEYS = st.one_of(
    st.sampled_from(["attn1.to_q", "to_k", "down_blocks.0.attentions.0.proj_out", "^mid_block.*", "(.*)*x",
                     "attn[12]\\.to_(q|k)", "(a+)+$", "(?=x)", "\\1", "a{99}", "[z-a]", "(", "x" * 1001, ".*", "",
                     "text_model.*"]),
    st.text(alphabet="a._()[]*+?|\\{}^$0", max_size=10),
)  # fmt: skip
NUMBER_OR_JUNK = st.one_of(st.integers(-4, 64), st.floats(allow_subnormal=False), JSON)


@st.composite
def peft_metadata(draw) -> str:
    rng = _rng(draw)
    config = {}
    good = rng.random() < 0.6  # values of the right types, or anything
    number = st.one_of(st.integers(1, 64), st.floats(0.5, 64, allow_subnormal=False)) if good else NUMBER_OR_JUNK
    for component in rng.sample(["unet", "text_encoder", "text_encoder_2", ""], rng.choice([0, 1, 1, 2])):
        prefix = f"{component}." if component else ""
        if rng.random() < 0.5:
            config[prefix + "r"] = rng.randint(1, 8) if good else draw(st.one_of(st.integers(-1, 8), JSON))
        if rng.random() < 0.8:
            config[prefix + "lora_alpha"] = draw(number)
        if rng.random() < 0.5:
            pattern = st.dictionaries(PATTERN_KEYS, number, max_size=4)
            config[prefix + "alpha_pattern"] = draw(pattern if good else st.one_of(pattern, JSON))
        if rng.random() < 0.2:
            config[prefix + "rank_pattern"] = draw(st.dictionaries(PATTERN_KEYS, st.integers(1, 8) if good else JSON))
        if rng.random() < 0.2:
            config[prefix + "use_rslora"] = rng.random() < 0.5 if good else draw(JSON)
    text = json.dumps(config)
    return rng.choice([text] * 12 + [text[: len(text) // 2], "[" * 2000 + "]" * 2000, "{not json"])


METADATA_VALUES = {
    "modelspec.architecture": st.sampled_from(["stable-diffusion-v1/lora", "stable-diffusion-xl-v1-base/lora",
                                               "stable-diffusion-v2-768-v/lora", "stable-diffusion-xl\n" + "x" * 300,
                                               "flux-1-dev/lora", ""]),
    "ss_base_model_version": st.sampled_from(["sd_v1", "sd_v2", "sdxl_base_v1-0", "sd_1", "junk", "\u202e" * 100]),
    "ss_tag_frequency": st.one_of(JSON.map(json.dumps), st.just("{" * 3000),
                                  st.just('{"a": {"b": ' + "9" * 5000 + "}}")),
    "ss_resolution": st.sampled_from(["(512, 512)", "[1024,1024]", "(" * 50, "512"]),
    "modelspec.trigger_phrase": st.text(max_size=20),
    "modelspec.title": st.text(max_size=20),
    "ss_network_args": JSON.map(json.dumps),
    "ss_sd_model_name": st.sampled_from(["None", "", "v1-5-pruned.ckpt"]),
}  # fmt: skip


@st.composite
def metadata(draw):
    rng = _rng(draw)
    if rng.random() < 0.02:
        return draw(st.one_of(JSON, st.dictionaries(st.text(max_size=4), JSON, max_size=2)))
    meta = {}
    if rng.random() < 0.5:
        meta["lora_adapter_metadata"] = draw(peft_metadata())
    for key in rng.sample(sorted(METADATA_VALUES), rng.choice([0, 0, 1, 2, 3, 4])):
        meta[key] = draw(METADATA_VALUES[key])
    return meta


# --- files -----------------------------------------------------------------------------------------------------


def _data(dtype, numel: int, mode: str, rng: random.Random) -> bytes:
    size = DTYPES[dtype][0] if isinstance(dtype, str) and dtype in DTYPES else 1
    if mode == "random":
        return rng.randbytes(numel * size)
    if mode == "zeros" or dtype not in ("F32", "F16", "BF16", "F64", "F8_E4M3", "F8_E5M2"):
        return bytes(numel * size)
    values = torch.tensor([rng.uniform(-1, 1) for _ in range(numel)])
    torch_dtype = getattr(torch, DTYPES[dtype][1])
    return values.to(torch_dtype).reshape(-1).view(torch.uint8).numpy().tobytes()


@st.composite
def safetensors_file(draw) -> bytes:
    entries = draw(tensor_table())
    rng = _rng(draw)
    mode = rng.choice(["values"] * 6 + ["zeros", "random"])
    offsets_mode = rng.choice(["consistent"] * 17 + ["shifted", "swapped", "junk"])
    header, data, position = {}, bytearray(), 0
    for name, dtype, shape in entries:
        if name in header:
            continue
        valid_shape = isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in shape)
        numel = math.prod(shape) if valid_shape and all(s >= 0 for s in shape) else 0
        size = DTYPES[dtype][0] if isinstance(dtype, str) and dtype in DTYPES else 1
        nbytes = numel * size if numel * size <= 4096 else 0  # huge claims get no data: the offsets disagree
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [position, position + nbytes]}
        data += _data(dtype, nbytes // size, mode, rng)
        position += nbytes
    if header and offsets_mode != "consistent":
        name = draw(st.sampled_from(sorted(header)))
        start, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = {
            "shifted": [start + draw(st.integers(-4, 4)), end + draw(st.integers(-4, 4))],
            "swapped": [end, start],
            "junk": draw(st.sampled_from([[True, False], [start], [start, end, 0], "0", [start, 2**70], None])),
        }[offsets_mode]
    meta = draw(metadata())
    if meta != {} or rng.random() < 0.5:
        header["__metadata__"] = meta
    text = json.dumps(header).encode("utf-8", "surrogatepass")
    if rng.random() < 0.1:
        text += b" " * rng.randint(1, 7)  # padding, as the library writes
    tail = b"\x00" * 3 if rng.random() < 0.03 else b""
    return struct.pack("<Q", len(text)) + text + bytes(data) + tail


# --- the test --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_path(tmp_path_factory):
    start = time.perf_counter()
    yield tmp_path_factory.mktemp("fuzz") / "fuzzed.safetensors"
    total = time.perf_counter() - start
    runs = sum(n for (reader, _), n in OUTCOMES.items() if reader == "read_adapter")
    by_reader = {}
    for (reader, outcome), n in sorted(OUTCOMES.items()):
        by_reader.setdefault(reader, []).append(f"{outcome} {n}")
    parts = "; ".join(f"{reader}: {', '.join(items)}" for reader, items in by_reader.items())
    print(f"\nfuzz reader: {runs} files; {parts}; slowest read {SLOWEST[0]:.3f} s; total {total:.1f} s")


def _outcome(read, path, reader: str):
    start = time.perf_counter()
    try:
        result = read()
    except AdapterError as e:
        message = str(e)
        assert message.startswith(f"{path}: ") and "\n" not in message, f"{reader}: {message!r}"
        assert len(message) < 700, f"{reader}: a message of {len(message)} characters"
        result = e
    elapsed = time.perf_counter() - start
    SLOWEST[0] = max(SLOWEST[0], elapsed)
    assert elapsed < TIME_BOUND, f"{reader} took {elapsed:.2f} s"
    OUTCOMES[(reader, type(result).__name__)] += 1
    return result


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(blob=safetensors_file())
def test_generated_files_give_adapters_or_typed_errors(blob, fuzz_path):
    fuzz_path.write_bytes(blob)
    full = _outcome(lambda: read_adapter(fuzz_path), fuzz_path, "read_adapter")
    shape_only = _outcome(lambda: read_adapter(fuzz_path, tensors=False), fuzz_path, "read_adapter(tensors=False)")
    info = _outcome(lambda: inspect_file(fuzz_path), fuzz_path, "inspect_file")
    assert type(info) is (dict if not isinstance(full, AdapterError) else type(full))
    if not isinstance(full, AdapterError):
        # what reads in full reads by its structure alike (the numbers are all the structure-only read skips)
        assert not isinstance(shape_only, AdapterError), shape_only
        assert (shape_only.kinds(), shape_only.family, shape_only.alphas(), shape_only.ranks()) == (
            full.kinds(),
            full.family,
            full.alphas(),
            full.ranks(),
        )
        assert info["layers"] == len(full.layers) and json.dumps(info, default=str)
