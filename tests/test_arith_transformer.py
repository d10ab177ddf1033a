"""Arithmetic on FLUX.1 and SD3 (transformer) bases: merge and resize of kohya and BFL adapters with fused ``qkv`` /
``linear1`` modules, bake of single-file checkpoints in the original layouts then generate equal to the stack, and
extract of a known change from a transformer fine-tune. The deltas are checked against the adapters' own matrices
(:func:`~lorastack.testing.transformer_adapters.original_deltas`), not lorastack's reader."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from transformer_helpers import latents, module_weights

from lorastack.adapters import read_adapter
from lorastack.core.arith_runs import Output, run_bake, run_extract, run_merge, run_resize
from lorastack.core.base import load_base
from lorastack.core.stack import AdapterStack
from lorastack.testing.models import load_pipeline
from lorastack.testing.transformer_adapters import make_original_lora, original_deltas, original_state_dict
from lorastack.testing.transformer_files import save_bundled_checkpoint, save_transformer_files

FAMILIES = [
    pytest.param("flux", id="flux"),
    pytest.param("sd3", id="sd3", marks=pytest.mark.slow),
]


def _adapters(pipe, family, folder):
    """A kohya LoRA and a BFL LoKr on every original module (fused qkv, linear1, modulations, norm_out)."""
    made = {}
    for label, kind, dialect, seed in (("lora", "lora", "kohya", 1), ("lokr", "lokr", "bfl", 2)):
        layers = make_original_lora(pipe, family, rank=4, alpha=2.0, seed=seed, kind=kind, std=0.05)
        path = folder / f"{label}.safetensors"
        save_file(original_state_dict(layers, dialect), str(path))
        made[label] = (path, original_deltas(layers))
    return made


def _file_deltas(path, weights):
    return {name: layer.delta(shape=weights[name].shape) for name, layer in read_adapter(path).layers.items()}


@pytest.fixture
def setup(request, tiny_pipe_dir, tmp_path):
    family = request.param
    folder = tiny_pipe_dir(family)
    pipe = load_pipeline(folder)
    return family, folder, pipe, _adapters(pipe, family, tmp_path)


@pytest.mark.parametrize("setup", FAMILIES, indirect=True)
def test_merge_and_resize_of_fused_kohya_and_bfl_adapters(setup, tmp_path):
    _family, _, pipe, made = setup
    weights = module_weights(pipe)
    (a, da), (b, db) = made["lora"], made["lokr"]
    data = run_merge([f"{a}:0.8", f"{b}:-0.5"], Output(tmp_path / "m.safetensors"))
    got = _file_deltas(tmp_path / "m.safetensors", weights)
    assert set(got) == set(da) | set(db)
    for name, d in got.items():
        expected = 0.8 * da[name].reshape(d.shape) - 0.5 * db[name].reshape(d.shape)
        torch.testing.assert_close(d, expected, rtol=1e-5, atol=1e-6)
    assert data["summary"]["relative_error"] < 1e-6 and data["format"] == "kohya"
    # the kohya LoRA's projections stay LoRAs (up rows of the fused factor), never full differences
    lora_only = run_merge([str(a), f"{a}:0.5"], Output(tmp_path / "aa.safetensors"))
    assert lora_only["summary"]["full_layers"] == 0
    # resize at the input's rank is lossless, per projection of every fused module
    run_resize(str(a), Output(tmp_path / "r.safetensors"), rank=4)
    for name, d in _file_deltas(tmp_path / "r.safetensors", weights).items():
        torch.testing.assert_close(d, da[name].reshape(d.shape), rtol=1e-4, atol=1e-6)
    svd = run_merge([str(a), str(b)], Output(tmp_path / "s.safetensors"), "svd", rank=2)
    assert all(layer["error"] <= layer["optimal_error"] * (1 + 1e-3) + 1e-6 for layer in svd["layers"])


def _stack_weights(pipe, loras):
    stack = AdapterStack(pipe)
    for name, (path, _scale) in loras.items():
        stack.load(name, path, strict=True)
    stack.activate({name: scale for name, (_, scale) in loras.items()})
    return stack


@pytest.mark.slow  # two single-file bakes and four pipeline loads
@pytest.mark.parametrize("setup", FAMILIES, indirect=True)
def test_bake_single_files_then_generate_equals_the_stack(setup, tmp_path):
    _family, folder, pipe, made = setup
    (a, _), (b, _) = made["lora"], made["lokr"]
    loras = [f"{a}:0.8", f"{b}:0.5"]
    stack = _stack_weights(pipe, {"a": (a, 0.8), "b": (b, 0.5)})
    expected_weights, expected = module_weights(pipe), latents(pipe)
    stack.deactivate()
    assert (latents(pipe) - expected).abs().max() > 1e-3  # the stack changes the result
    parts = save_transformer_files(pipe, tmp_path / "parts")
    components = {k: v for k, v in parts.items() if k != "transformer"}
    bundle = save_bundled_checkpoint(pipe, tmp_path / "checkpoint.safetensors")
    baked_parts = tmp_path / "baked-transformer.safetensors"
    run_bake(str(parts["transformer"]), loras, Output(baked_parts, base_components=components, config=str(folder)))
    run_bake(str(bundle), loras, Output(tmp_path / "baked.safetensors", config=str(folder)))
    for baked in (load_base(baked_parts, config=folder, **components),
                  load_base(tmp_path / "baked.safetensors", config=folder)):  # fmt: skip
        got = module_weights(baked)
        for name, w in expected_weights.items():  # every rewritten row in place (float32 rounding at most)
            torch.testing.assert_close(got[name], w, rtol=1e-6, atol=1e-7, msg=name)
        torch.testing.assert_close(latents(baked), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("setup", FAMILIES, indirect=True)
def test_extract_recovers_a_known_transformer_change(setup, tmp_path):
    _family, folder, _pipe, made = setup
    _, known = made["lora"]  # rank 4 per fused module: every projection's rows have rank ≤ 4
    tuned = load_pipeline(folder)
    weights = module_weights(tuned)
    from lorastack.core.modules import ModuleIndex

    index = ModuleIndex(tuned)
    with torch.no_grad():
        for name, d in known.items():
            index.get(name).weight.add_(d.reshape(weights[name].shape))
    tuned.save_pretrained(tmp_path / "tuned")
    data = run_extract(str(folder), str(tmp_path / "tuned"), Output(tmp_path / "x.safetensors"), rank=4,
                       components="transformer")  # fmt: skip
    assert data["summary"]["max_layer_relative_error"] < 1e-3
    got = _file_deltas(tmp_path / "x.safetensors", weights)
    assert set(got) == set(known)
    for name, d in got.items():
        torch.testing.assert_close(d, known[name].reshape(d.shape), rtol=1e-3, atol=2e-5)
