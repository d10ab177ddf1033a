"""Fuzz the reader: mutated adapter files give our typed errors or a correct result, never anything else."""

import hashlib
import json
import random
import struct
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorastack.adapters import AdapterError, read_adapter

TRIALS_PER_FILE = 600


def _kohya_file(path):
    g = torch.Generator().manual_seed(0)
    blocks = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0"
    sd = {
        f"{blocks}_attn1_to_q.lora_down.weight": torch.randn(2, 8, generator=g),
        f"{blocks}_attn1_to_q.lora_up.weight": torch.randn(8, 2, generator=g),
        f"{blocks}_attn1_to_q.alpha": torch.tensor(1.0),
        f"{blocks}_attn2_to_k.hada_w1_a": torch.randn(8, 2, generator=g),
        f"{blocks}_attn2_to_k.hada_w1_b": torch.randn(2, 6, generator=g),
        f"{blocks}_attn2_to_k.hada_w2_a": torch.randn(8, 2, generator=g),
        f"{blocks}_attn2_to_k.hada_w2_b": torch.randn(2, 6, generator=g),
        f"{blocks}_attn2_to_k.alpha": torch.tensor(2.0),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.randn(2, 4, generator=g),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.randn(4, 2, generator=g).half(),
    }
    save_file(sd, str(path), metadata={"modelspec.title": "fuzz", "ss_network_dim": "2"})
    return path


def _peft_file(path):
    g = torch.Generator().manual_seed(1)
    sd = {
        "unet.mid_block.attentions.0.proj_in.lora_A.weight": torch.randn(2, 8, 1, 1, generator=g),
        "unet.mid_block.attentions.0.proj_in.lora_B.weight": torch.randn(8, 2, 1, 1, generator=g),
        "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight": torch.randn(2, 4, generator=g),
        "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_B.weight": torch.randn(6, 2, generator=g),
        "unet.mid_block.attentions.0.proj_in.lora_magnitude_vector": torch.rand(8, generator=g) + 0.5,
    }
    meta = {"unet.r": 2, "unet.lora_alpha": 4, "text_encoder.r": 2, "text_encoder.lora_alpha": 1}
    save_file(sd, str(path), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(meta)})
    return path


def _header(raw):
    n = struct.unpack("<Q", raw[:8])[0]
    return n, json.loads(raw[8 : 8 + n])


def _with_header(raw, header):
    n = struct.unpack("<Q", raw[:8])[0]
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + raw[8 + n :]


def _mutate_header(raw, rng):
    _, header = _header(raw)
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    entry = dict(header[name])
    choice = rng.randrange(7)
    if choice == 0:
        entry["dtype"] = rng.choice(["F32", "F16", "BF16", "I32", "U8", "BOOL", "F64", "X9", 5])
    elif choice == 1:
        entry["shape"] = [rng.choice([0, 1, 2, 3, 4, 6, 8, -1, 2**40]) for _ in range(rng.randint(0, 4))]
    elif choice == 2:
        a, b = entry["data_offsets"]
        entry["data_offsets"] = [a + rng.randint(-8, 8), b + rng.randint(-8, 8)]
    elif choice == 3:
        header.pop(name)
        return _with_header(raw, header)
    elif choice == 4:
        header[rng.choice(["lora_unet_x.lora_down.weight", "unet.a.lora_B.weight", "junk"])] = header.pop(name)
        return _with_header(raw, header)
    elif choice == 5:
        header["__metadata__"] = rng.choice([{"a": 1}, [], "x", {"lora_adapter_metadata": "{not json"}, None])
        return _with_header(raw, header)
    else:
        entry = rng.choice([[], "x", None, {"dtype": "F32"}])
    header[name] = entry
    return _with_header(raw, header)


def _mutate(raw: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(7)
    data = bytearray(raw)
    if kind == 0:  # flip bytes anywhere
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # flip bytes inside the header
        n = struct.unpack("<Q", raw[:8])[0]
        for _ in range(rng.randint(1, 3)):
            data[8 + rng.randrange(n)] = rng.randrange(256)
    elif kind == 2:
        data = data[: rng.randrange(len(data))]
    elif kind == 3:
        data[:8] = struct.pack("<Q", rng.choice([0, 1, 7, len(raw), 2**63, rng.randrange(len(raw))]))
    elif kind == 4:
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == 5:
        data = bytearray(_mutate_header(raw, rng))
    else:  # corrupt tensor values only
        n = struct.unpack("<Q", raw[:8])[0]
        for _ in range(rng.randint(1, 4)):
            data[8 + n + rng.randrange(len(raw) - 8 - n)] ^= 1 << rng.randrange(8)
    return bytes(data)


def _digest(t: torch.Tensor) -> tuple:
    return (
        str(t.dtype),
        tuple(t.shape),
        hashlib.sha256(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()).digest(),
    )


def _check_result(adapter, path):
    """A successful read must match what is really in the file, tensor for tensor."""
    tensors = load_file(str(path))  # safetensors must agree that the file is readable
    in_file = Counter(_digest(t) for t in tensors.values())
    used = Counter(_digest(t) for layer in adapter.layers.values() for t in layer.tensors().values())
    assert not used - in_file, "the adapter holds tensors that are not in the file"
    alphas = sum(1 for k in tensors if k.endswith(".alpha") and k not in adapter.unrecognized_keys)
    assert sum(used.values()) + alphas + len(adapter.unrecognized_keys) == len(tensors)
    for layer in adapter.layers.values():
        # the delta must be computable; huge-but-finite stored values may still overflow it (not a read error)
        if layer.natural_shape is not None:
            assert layer.delta(torch.ones(layer.natural_shape)).shape == layer.natural_shape


@pytest.mark.parametrize("make", [_kohya_file, _peft_file])
def test_mutated_files_give_typed_errors_or_correct_results(make, tmp_path):
    raw = make(tmp_path / "base.safetensors").read_bytes()
    rng = random.Random(make.__name__)
    outcomes = Counter()
    path = tmp_path / "mutant.safetensors"
    for trial in range(TRIALS_PER_FILE):
        path.write_bytes(_mutate(raw, rng))
        try:
            adapter = read_adapter(path)
        except AdapterError as e:
            assert str(e).startswith(str(path)) and "\n" not in str(e), f"trial {trial}: {e!r}"
            outcomes[type(e).__name__] += 1
            continue
        except Exception as e:  # anything else is a bug
            pytest.fail(f"trial {trial}: untyped {type(e).__name__}: {e}")
        _check_result(adapter, path)
        outcomes["read"] += 1
    # the mutations must exercise both outcomes heavily, or the test proves little
    assert outcomes["read"] >= 50 and sum(v for k, v in outcomes.items() if k != "read") >= 300, outcomes
