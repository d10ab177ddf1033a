"""Adapters on quantized bases (torchao int8, GGUF Q8_0, fp8 storage on the CPU): bypassed in auto mode, the
quantized weights byte-identical, the output changed as the adapter says."""

import importlib.util

import pytest
import torch
from adapter_cases import make_case
from bypass_helpers import flux_output, sd3_output, sd_outputs
from stack_helpers import lycoris_adapter

from lorastack.adapters import parse_state_dict, read_adapter
from lorastack.core.errors import BaseModelError, IncompatibleAdapterError
from lorastack.core.modules import ModuleIndex
from lorastack.core.quantized import (
    dequantized_weight,
    load_gguf_denoiser,
    quantization_config,
    quantize_pipeline,
    quantized_kind,
    store_in_fp8,
    weight_bytes,
)
from lorastack.core.stack import AdapterStack
from lorastack.testing.models import load_pipeline
from lorastack.testing.transformer_adapters import make_original_lora, original_state_dict

needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed")
needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf is not installed")


def _stored(pipe, component="unet") -> dict[str, bytes]:
    index = ModuleIndex(pipe)
    return {
        n: weight_bytes(index.get(n).module)
        for n in index.names()
        if n.startswith(component) and quantized_kind(index.get(n).module)
    }


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


@pytest.mark.slow  # two tiny pipelines, every layer kind, whole-UNet forwards (the GGUF test covers the default run)
@needs_torchao
def test_torchao_int8_base_takes_every_layer_kind_in_bypass(tiny_sd1_dir, tmp_path):
    float_pipe = load_pipeline(tiny_sd1_dir)
    adapters = {
        "lyco": lycoris_adapter(float_pipe, seed=3, every=2),
        "locon": read_adapter(make_case(float_pipe, "kohya-locon", tmp_path / "locon.safetensors", seed=4)),
    }
    scales = {"lyco": 0.8, "locon": 0.7}
    reference = AdapterStack(float_pipe, mode="merge")
    for name, adapter in adapters.items():
        reference.load(name, adapter)
    f_base = sd_outputs(float_pipe)[1]
    reference.activate(scales)
    f_adapted = sd_outputs(float_pipe)[1]

    pipe = quantize_pipeline(load_pipeline(tiny_sd1_dir), tiny_sd1_dir, "torchao-int8")
    stored = _stored(pipe)
    assert len(stored) > 10 and {quantized_kind(m) for m in pipe.unet.modules() if quantized_kind(m)} == {"torchao"}
    stack = AdapterStack(pipe)  # auto: the int8 linears are bypassed, the float convolutions merged
    for name, adapter in adapters.items():
        stack.load(name, adapter)
    report = stack.apply_report()
    assert report["bypass"] > 0 and report["merge"] > 0
    assert all(v["why"] == "quantized (torchao)" for v in report["layers"].values() if v["mode"] == "bypass")
    q_base = sd_outputs(pipe)[1]
    stack.activate(scales)
    q_adapted = sd_outputs(pipe)[1]
    assert _stored(pipe) == stored  # the int8 weights are untouched, byte for byte
    # the change the adapters make on the int8 base is the change they make on the float base (int8 rounding aside)
    assert _relative(q_adapted - q_base, f_adapted - f_base) < 0.05
    stack.deactivate()
    assert torch.equal(sd_outputs(pipe)[1], q_base) and _stored(pipe) == stored


@needs_torchao
def test_one_quantized_layer_adds_exactly_its_delta(tiny_sd1_dir):
    pipe = quantize_pipeline(load_pipeline(tiny_sd1_dir), tiny_sd1_dir, "torchao-int8")
    adapter = lycoris_adapter(load_pipeline(tiny_sd1_dir), seed=7, every=1)
    stack = AdapterStack(pipe)
    stack.load("a", adapter)
    index = ModuleIndex(pipe)
    names = [n for n in index.names() if n.startswith("unet.") and quantized_kind(index.get(n).module)][:10]
    modules = [index.get(n).module for n in names]
    inputs = [torch.randn(3, m.in_features) for m in modules]
    before = [m(x) for m, x in zip(modules, inputs, strict=True)]
    stack.activate({"a": 0.5})
    kinds = set()
    for name, module, x, y in zip(names, modules, inputs, before, strict=True):
        layer = adapter.layers[name]
        kinds.add(layer.kind_label)
        shape = (module.out_features, module.in_features)
        delta = layer.delta(dequantized_weight(module)) if layer.is_dora else layer.delta(shape=shape)
        torch.testing.assert_close(module(x) - y, 0.5 * x @ delta.T, atol=1e-5, rtol=1e-4)
    assert {"loha", "lokr", "lora+dora", "full", "lora"} <= kinds


@needs_torchao
def test_merge_mode_refuses_a_quantized_layer_in_one_line(tiny_sd1_dir, tmp_path):
    pipe = quantize_pipeline(load_pipeline(tiny_sd1_dir), tiny_sd1_dir, "torchao-int8")
    path = make_case(pipe, "peft", tmp_path / "a.safetensors")
    with pytest.raises(IncompatibleAdapterError, match=r"is quantized \(torchao\): merge mode cannot patch") as e:
        AdapterStack(pipe, mode="merge").load("a", path)
    assert "\n" not in str(e.value)


@needs_gguf
@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_gguf_transformer_base_in_bypass(family, tiny_flux_dir, tiny_sd3_dir, tmp_path):
    from lorastack.testing.quantized_files import save_gguf
    from lorastack.testing.transformer_files import transformer_state

    folder, output = (tiny_flux_dir, flux_output) if family == "flux" else (tiny_sd3_dir, sd3_output)
    float_pipe = load_pipeline(folder)
    path, quantized = save_gguf(transformer_state(float_pipe.transformer), tmp_path / f"{family}.gguf", family)
    assert quantized >= 5
    lora = parse_state_dict(original_state_dict(make_original_lora(float_pipe, family, rank=4, seed=1, std=0.05)))
    reference = AdapterStack(float_pipe, mode="merge")
    reference.load("a", lora)
    f_base = output(float_pipe)
    reference.activate({"a": 1.0})
    f_adapted = output(float_pipe)

    pipe = load_pipeline(folder)
    pipe.register_modules(transformer=load_gguf_denoiser(path, folder, torch.float32))
    stored = _stored(pipe, "transformer")
    assert len(stored) == quantized
    stack = AdapterStack(pipe)
    stack.load("a", lora)
    assert {v["why"] for v in stack.apply_report()["layers"].values()} == {"quantized (gguf)", "a plain weight"}
    q_base = output(pipe)
    stack.activate({"a": 1.0})
    q_adapted = output(pipe)
    assert _stored(pipe, "transformer") == stored
    assert _relative(q_adapted - q_base, f_adapted - f_base) < 0.05


def test_fp8_stored_base_in_bypass(tiny_flux_dir):
    pipe = load_pipeline(tiny_flux_dir)
    store_in_fp8(pipe.transformer, torch.float32)
    lora = parse_state_dict(original_state_dict(make_original_lora(pipe, "flux", rank=4, seed=1, std=0.05)))
    stored = _stored(pipe, "transformer")
    assert stored and {quantized_kind(ModuleIndex(pipe).get(n).module) for n in stored} == {"fp8"}
    stack = AdapterStack(pipe)
    stack.load("a", lora)
    base = flux_output(pipe)
    stack.activate({"a": 1.0})
    assert _stored(pipe, "transformer") == stored and (flux_output(pipe) - base).abs().max() > 1e-2
    stack.deactivate()
    assert torch.equal(flux_output(pipe), base)


@pytest.mark.skipif(torch.cuda.is_available(), reason="bitsandbytes loads only on a GPU; checked there")
def test_bitsandbytes_without_a_gpu_is_one_line(tiny_sd1_dir):
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(BaseModelError, match="needs the 'bitsandbytes' package"):
            quantization_config("bnb-nf4")
        return
    with pytest.raises(BaseModelError, match="cannot load .* as bnb-nf4") as e:
        quantize_pipeline(load_pipeline(tiny_sd1_dir), tiny_sd1_dir, "bnb-nf4")
    assert "\n" not in str(e.value)
