"""Hand-laid safetensors files and the checks the adapter-reader hardening tests share: every read of a file is an
adapter or a one-line ``AdapterError`` naming it, within a time bound."""

from __future__ import annotations

import json
import math
import re
import struct
import time

import torch

from lorastack.adapters import AdapterError, inspect_file, read_adapter
from lorastack.adapters.files import DTYPES

KOHYA = "lora_unet_down_blocks_0_attentions_0_proj_in"
PEFT = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
MESSAGE_LIMIT = 400  # no message echoes a long value


def raw_file(path, entries: dict, metadata=None, header_text: str | None = None):
    """A safetensors file laid out from ``{name: (dtype, shape)}`` (consistent offsets; data random or zero)."""
    header, data, pos = {}, b"", 0
    g = torch.Generator().manual_seed(0)
    for name, (dtype, shape) in entries.items():
        n = math.prod(shape) * DTYPES[dtype][0] if isinstance(dtype, str) and dtype in DTYPES else 0
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + n]}
        pos += n
        if dtype == "F32":
            data += (torch.randn(n // 4, generator=g) * 0.1).numpy().tobytes()
        else:
            data += bytes(n)
    if metadata is not None:
        header["__metadata__"] = metadata
    text = (header_text if header_text is not None else json.dumps(header)).encode("utf-8", "surrogatepass")
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def lora(prefix=KOHYA, kohya=True):
    if kohya:
        return {f"{prefix}.lora_down.weight": ("F32", [2, 8]), f"{prefix}.lora_up.weight": ("F32", [8, 2])}
    return {f"{prefix}.lora_A.weight": ("F32", [2, 8]), f"{prefix}.lora_B.weight": ("F32", [8, 2])}


def outcomes(path):
    """Read ``path`` every way the reader offers; each must be an Adapter or a one-line AdapterError naming it."""
    results = []
    for read in (
        lambda: read_adapter(path),
        lambda: read_adapter(path, tensors=False),
        lambda: inspect_file(path),
    ):
        start = time.perf_counter()
        try:
            results.append(read())
        except AdapterError as e:
            message = str(e)
            assert message.startswith(str(path)) and "\n" not in message, message
            assert len(message) < MESSAGE_LIMIT + len(str(path)), message
            results.append(e)
        assert time.perf_counter() - start < 2.0
    return results


def assert_refused(path, error=AdapterError, match=None):
    for result in outcomes(path):
        assert isinstance(result, error), result
        if match:
            assert re.search(match, str(result)), str(result)


def peft_file(path, config: dict, component="unet"):
    meta = {"lora_adapter_metadata": json.dumps({f"{component}.{k}": v for k, v in config.items()})}
    return raw_file(path, {**lora(PEFT, kohya=False), **lora(PEFT.replace("to_q", "to_k"), kohya=False)}, meta)
