"""SDXL arithmetic: a single-file bake writes both text encoders in their original layouts (CLIP-L's keys, OpenCLIP's
fused ``in_proj_weight`` rows for the second) and the UNet's, so the baked file loads with the stack's weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from arith_helpers import lora_layers, save, targets
from safetensors import safe_open

from lorastack.core.arith import RECORD_KEY
from lorastack.core.arith_runs import Output, run_bake, run_merge
from lorastack.core.base import load_base
from lorastack.core.generate import GenerateOptions, Generator
from lorastack.core.modules import ModuleIndex
from lorastack.core.stack import AdapterStack
from lorastack.testing.single_file import save_single_file


def _weights(pipe):
    index = ModuleIndex(pipe)
    return {n: index.get(n).weight.detach().clone() for n in index.names()}


def _image(pipe, stack=None, scales=None):
    options = GenerateOptions("a red square", steps=2, seed=1, width=64, height=64, adapters=scales or {})
    return np.asarray(Generator(pipe, stack).generate(options)[0].image, dtype=np.int16)


@pytest.mark.slow
def test_sdxl_single_file_bake_holds_the_stack(tmp_path, tiny_sdxl_dir, tiny_sdxl_pipe):
    weights = targets(tiny_sdxl_pipe, components=("unet", "text_encoder", "text_encoder_2"))
    assert any(n.startswith("text_encoder_2.") and ".self_attn.k_proj" in n for n in weights)
    a = save(lora_layers(weights, rank=4, seed=1, std=0.1), tmp_path / "a.safetensors", family="sdxl")
    b = save(lora_layers(weights, rank=2, seed=2, std=0.1), tmp_path / "b.safetensors", fmt="diffusers",
             family="sdxl")  # fmt: skip
    single = save_single_file(load_base(str(tiny_sdxl_dir)), tmp_path / "xl.safetensors")
    loras = [f"{a}:0.8", f"{b}:te=0.5:unet=0.3"]
    written = run_bake(str(single), loras, Output(tmp_path / "baked.safetensors", config=str(tiny_sdxl_dir)))
    assert written["form"] == "single_file" and written["modules"] == len(weights)
    base = load_base(str(tiny_sdxl_dir))
    stack = AdapterStack(base)
    stack.load("a", a)
    stack.load("b", b)
    scales = {"a": 0.8, "b": {"text_encoder": 0.5, "text_encoder_2": 0.5, "unet": 0.3}}  # te: both encoders
    stack.activate(scales)
    expected = _weights(base)
    expected_image = _image(base, stack, scales)
    baked = load_base(str(tmp_path / "baked.safetensors"), config=tiny_sdxl_dir)
    got = _weights(baked)
    for name in weights:  # q/k/v of the second encoder are row thirds of one OpenCLIP tensor
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-6)
    assert np.abs(_image(baked) - expected_image).max() <= 1
    with safe_open(str(tmp_path / "baked.safetensors"), "pt") as f:
        assert '"method": "bake"' in f.metadata()[RECORD_KEY]
    merged = run_merge([f"{a}:0.8", str(b)], Output(tmp_path / "m.safetensors"), "svd", rank=3)
    assert merged["family"] == "sdxl" and merged["summary"]["ranks"] == [3]
