"""Adapter tensors and families: fp8 files read, inspect, convert and load, and NaNs in them are refused; a declared
family other than the base's is refused on load, a topology guess is never written as a declaration; pickled
tensors without plain data (opt-in pickles) are typed one-line errors.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from adapter_cases import make_case
from cli_helpers import run_cli
from reader_helpers import KOHYA
from safetensors import safe_open
from safetensors.torch import save_file

from lorastack.adapters import (
    AdapterError,
    InvalidAdapterError,
    convert_file,
    inspect_file,
    read_adapter,
    write_adapter,
)
from lorastack.core.errors import IncompatibleAdapterError
from lorastack.core.stack import AdapterStack
from lorastack.testing.adapters import make_kohya_lora, module_weights

# --- fp8 adapters -------------------------------------------------------------------------------------------

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]


def fp8_kohya(pipe, path, dtype):
    tensors = make_kohya_lora(pipe, ("unet", "text_encoder"), rank=4, alpha=2.0, seed=3, conv=True)
    save_file({k: v.to(dtype) for k, v in tensors.items()}, str(path))
    return path


@pytest.mark.parametrize("dtype", FP8, ids=["e4m3", "e5m2"])
def test_fp8_files_read_inspect_convert_and_load(dtype, tiny_sd1_pipe, tmp_path):
    path = fp8_kohya(tiny_sd1_pipe, tmp_path / "fp8.safetensors", dtype)
    adapter = read_adapter(path)
    assert {t.dtype for layer in adapter.layers.values() for t in layer.tensors().values()} == {dtype}
    assert read_adapter(path, tensors=False).kinds() == adapter.kinds()
    assert inspect_file(path)["layers"] == len(adapter.layers)
    for fmt in ("kohya", "diffusers"):
        out = convert_file(path, tmp_path / f"{fmt}.safetensors", fmt)
        back = read_adapter(out)
        with safe_open(str(out), framework="pt") as f:  # fp8 stays fp8; alphas are float32
            names = f.keys()
            dtypes = {f.get_slice(k).get_dtype() for k in names if not k.endswith(".alpha")}
        assert dtypes == {"F8_E4M3" if dtype == torch.float8_e4m3fn else "F8_E5M2"}
        assert set(back.layers) == set(adapter.layers)
        for name, layer in back.layers.items():
            assert torch.equal(layer.delta(), adapter.layers[name].delta())
    # the stack patches with the fp8 values upcast: the same weights as a float32 copy of those values
    upcast = tmp_path / "f32.safetensors"
    with safe_open(str(path), framework="pt") as f:
        names = f.keys()
        save_file({k: f.get_tensor(k).float() for k in names}, str(upcast))
    stack = AdapterStack(tiny_sd1_pipe)
    stack.load("fp8", path)
    stack.load("f32", upcast)
    stack.activate({"fp8": 0.8})
    fp8_weights = module_weights(tiny_sd1_pipe)
    stack.activate({"f32": 0.8})
    assert all(torch.equal(fp8_weights[m], w) for m, w in module_weights(tiny_sd1_pipe).items())


def test_fp8_cli(tiny_sd1_pipe, tmp_path):
    path = fp8_kohya(tiny_sd1_pipe, tmp_path / "fp8.safetensors", torch.float8_e4m3fn)
    code, out, err = run_cli("inspect", path)
    assert code == 0 and "locon x" in out, err
    code, out, err = run_cli("convert", path, "--to", "kohya", "-o", tmp_path / "k.safetensors")
    assert code == 0 and "wrote" in out, err
    code, out, err = run_cli("inspect", tmp_path / "k.safetensors", "--json")
    assert code == 0 and json.loads(out)["layers"] == len(read_adapter(path).layers), err


@pytest.mark.parametrize("dtype", FP8, ids=["e4m3", "e5m2"])
def test_fp8_nan_is_refused(dtype, tmp_path):
    down = torch.randn(2, 8)
    down[1, 3] = float("nan")
    tensors = {f"{KOHYA}.lora_down.weight": down.to(dtype), f"{KOHYA}.lora_up.weight": torch.randn(8, 2).to(dtype)}
    save_file(tensors, str(tmp_path / "nan.safetensors"))
    with pytest.raises(InvalidAdapterError, match="NaN"):
        read_adapter(tmp_path / "nan.safetensors")


# --- declared family against the base ---------------------------------------------------------------------


def with_metadata(path, extra: dict):
    with safe_open(str(path), framework="pt") as f:
        names = f.keys()
        tensors = {k: f.get_tensor(k) for k in names}
        meta = dict(f.metadata() or {})
    save_file(tensors, str(path), metadata={**meta, **extra})
    return path


def test_a_declared_family_other_than_the_base_is_refused(tiny_sd1_pipe, tmp_path):
    base = module_weights(tiny_sd1_pipe)
    path = make_case(tiny_sd1_pipe, "peft", tmp_path / "x.safetensors")  # SD1 topology: every layer fits
    with_metadata(path, {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"})
    adapter = read_adapter(path)
    assert adapter.family == "sdxl" and adapter.probe.declared == "modelspec.architecture"
    stack = AdapterStack(tiny_sd1_pipe)
    with pytest.raises(IncompatibleAdapterError) as info:
        stack.load("x", path)
    assert re.search(
        r"'x' .* declares SDXL \(modelspec\.architecture is stable-diffusion-xl-v1-base/lora\) "
        r"but the base is SD 1\.x",
        str(info.value),
    )
    assert stack.loaded == [] and all(torch.equal(base[m], w) for m, w in module_weights(tiny_sd1_pipe).items())
    with_metadata(path, {"modelspec.architecture": "", "ss_base_model_version": "sdxl_base_v1-0"})
    with pytest.raises(IncompatibleAdapterError, match="declares SDXL"):
        stack.load("x", path)
    with_metadata(path, {"ss_base_model_version": "sd_v1"})  # declared right: loads
    assert stack.load("x", path).complete and read_adapter(path).probe.declared == "ss_base_model_version"


def test_a_topology_guess_is_not_written_as_a_declaration(tmp_path):
    from lorastack.adapters import Adapter, LoRALayer

    # attention in the first up block: SDXL's topology, at a width no real model has (a toy model's)
    name = "unet.up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    adapter = Adapter({name: LoRALayer(torch.randn(2, 24), torch.randn(24, 2), alpha=1.0)})
    assert adapter.family == "sdxl" and adapter.probe.guessed and adapter.probe.declared is None
    for fmt in ("kohya", "diffusers"):
        out = write_adapter(adapter, tmp_path / f"{fmt}.safetensors", fmt)
        with safe_open(str(out), framework="pt") as f:
            header = f.metadata()
        assert "modelspec.architecture" not in header and "ss_base_model_version" not in header
        assert read_adapter(out).probe.declared is None
        out = write_adapter(adapter, tmp_path / f"{fmt}-sd1.safetensors", fmt, family="sd1")  # said: declared
        assert read_adapter(out).probe.declared_family == "sd1"


# --- pickles (opt-in) hold tensors a safetensors file cannot ------------------------------------------------


@pytest.mark.parametrize("kind", ["sparse", "meta", "quantized", "complex alpha"])
def test_pickled_tensors_without_plain_data(kind, tmp_path):
    tensors = {f"{KOHYA}.lora_down.weight": torch.randn(2, 8), f"{KOHYA}.lora_up.weight": torch.randn(8, 2)}
    if kind == "sparse":
        tensors[f"{KOHYA}.lora_down.weight"] = torch.randn(2, 8).to_sparse()
    elif kind == "meta":
        tensors[f"{KOHYA}.alpha"] = torch.empty((), device="meta")
    elif kind == "quantized":
        tensors[f"{KOHYA}.lora_up.weight"] = torch.quantize_per_tensor(torch.randn(8, 2), 0.1, 0, torch.qint8)
    else:
        tensors[f"{KOHYA}.alpha"] = torch.tensor(1 + 2j)
    path = tmp_path / "lora.pt"
    torch.save(tensors, path)
    for read in (lambda: read_adapter(path, allow_pickle=True), lambda: inspect_file(path, allow_pickle=True)):
        with pytest.raises(AdapterError) as info:
            read()
        assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
