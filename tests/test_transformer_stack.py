"""The adapter stack on transformer bases (Flux, SD3): diffusers parity, exact restore, block scales."""

import logging
import random

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformer_helpers import latents, module_weights, peft_lora_file

from lorastack.adapters import read_adapter
from lorastack.core.errors import IncompatibleAdapterError, ScaleError
from lorastack.core.modules import block_counts
from lorastack.core.stack import AdapterStack
from lorastack.testing.models import load_pipeline


@pytest.fixture(params=["flux", "sd3"])
def setup(request, tiny_pipe_dir, tmp_path):
    folder = tiny_pipe_dir("flux" if request.param == "flux" else "sd3.5")
    pipe = load_pipeline(folder)
    style = peft_lora_file(pipe, tmp_path / "style.safetensors", seed=1, text_encoder=True)
    subject = peft_lora_file(pipe, tmp_path / "subject.safetensors", seed=2, rank=2, alpha=1.0)
    return request.param, folder, pipe, style, subject


def test_block_counts_come_from_the_model_config(tiny_flux_pipe, tiny_sd3_pipe):
    assert block_counts(tiny_flux_pipe) == {"double": 2, "single": 3}
    assert block_counts(tiny_sd3_pipe) == {"joint": 3}


def test_zero_scales_equal_the_base_exactly(setup):
    _, _, pipe, style, subject = setup
    base = latents(pipe)
    stack = AdapterStack(pipe)
    stack.load("style", style)
    stack.load("subject", subject)
    stack.activate({"style": 0.0, "subject": 0.0})
    assert torch.equal(latents(pipe), base)
    stack.activate({"style": 0.8, "subject": 0.5})
    assert not torch.equal(latents(pipe), base)


def test_stack_matches_diffusers_set_adapters(setup):
    _, folder, pipe, style, subject = setup
    stack = AdapterStack(pipe)
    stack.load("style", style)
    stack.load("subject", subject)
    stack.activate({"style": 0.8, "subject": 0.5})
    ours = latents(pipe)
    reference = load_pipeline(folder)
    reference.load_lora_weights(str(style), adapter_name="style_ref")
    reference.load_lora_weights(str(subject), adapter_name="subject_ref")
    reference.set_adapters(["style_ref", "subject_ref"], adapter_weights=[0.8, 0.5])
    theirs = latents(reference)
    assert (ours - theirs).abs().max() <= 1e-4
    assert (ours - latents(load_pipeline(folder))).abs().max() > 0.05  # and the stack does something


def _random_scale(rng, family):
    group = "single" if family == "flux" else "joint"
    return rng.choice(
        [
            round(rng.uniform(-1, 1.5), 3),
            0.0,
            {"transformer": round(rng.uniform(0, 1), 2), "text_encoder": 0.0},
            {"scale": 0.5, "transformer": {group: 0.0, f"{group}.1": 0.7, "scale": 0.9}},
            {"transformer": {group: [round(rng.uniform(0, 1), 2) for _ in range(3)]}},
        ]
    )


@pytest.mark.parametrize("operations", [pytest.param(1000, marks=pytest.mark.slow), 100])
def test_base_is_restored_exactly_after_random_operations(setup, operations):
    family, folder, pipe, style, subject = setup
    sources = {"style": style, "subject": subject}
    base = module_weights(pipe)
    stack = AdapterStack(pipe)
    fresh = AdapterStack(load_pipeline(folder))  # the same states, each activated from scratch
    for name, source in sources.items():
        stack.load(name, source)
        fresh.load(name, source)
    rng = random.Random(0)
    for i in range(operations):
        op = rng.choice(["activate", "activate", "switch", "scale", "deactivate", "fuse", "unfuse", "reload"])
        names = stack.loaded
        if op in ("activate", "switch"):
            stack.activate({n: _random_scale(rng, family) for n in rng.sample(names, rng.randint(1, len(names)))})
        elif op == "scale":
            stack.set_scale(rng.choice(names), _random_scale(rng, family))
        elif op == "deactivate":
            stack.deactivate()
        elif op == "fuse":
            stack.fuse()
        elif op == "unfuse":
            stack.unfuse()
        else:
            name = rng.choice(names)
            stack.unload(name)
            stack.load(name, sources[name])
        if i % 50 == 0 or i == operations - 1:
            fresh.activate(stack.active if stack.fused else {})
            now, want = module_weights(pipe), module_weights(fresh.pipe)
            assert all(torch.equal(now[m], want[m]) for m in base), f"after operation {i} ({op})"
            fresh.deactivate()
    stack.deactivate()
    restored = module_weights(pipe)
    assert all(torch.equal(restored[m], base[m]) for m in base)


def test_a_zero_block_group_equals_the_file_without_those_layers(setup, tmp_path):
    family, _, pipe, style, _ = setup
    group, path = ("single", "single_transformer_blocks.") if family == "flux" else ("joint", "transformer_blocks.1.")
    tensors = load_file(str(style))
    kept = {k: v for k, v in tensors.items() if f"transformer.{path}" not in k}
    assert len(kept) < len(tensors)
    from safetensors import safe_open

    with safe_open(str(style), "pt") as f:
        metadata = f.metadata()
    save_file(kept, str(tmp_path / "cut.safetensors"), metadata=metadata)
    stack = AdapterStack(pipe)
    stack.load("style", style)
    stack.load("cut", tmp_path / "cut.safetensors")
    key = group if family == "flux" else "joint.1"
    stack.activate({"style": {"transformer": {key: 0.0}}})
    blocked = latents(pipe)
    stack.activate({"cut": 1.0})
    assert torch.equal(latents(pipe), blocked)
    stack.activate({"style": 1.0})
    assert not torch.equal(latents(pipe), blocked)


def test_block_scales_are_checked_against_the_base_and_the_adapter(setup, tmp_path, caplog):
    family, _, pipe, style, _ = setup
    stack = AdapterStack(pipe)
    stack.load("style", style)
    group, other = ("double", "joint") if family == "flux" else ("joint", "single")
    before = module_weights(pipe)
    with pytest.raises(ScaleError, match=rf"{group}\.7: this base has \d {group} blocks"):
        stack.activate({"style": {"transformer": {f"{group}.7": 0.5}}})
    with pytest.raises(ScaleError, match=f"unknown transformer block key '{other}'"):
        stack.activate({"style": {"transformer": {other: 0.5}}})
    with pytest.raises(ScaleError, match="unet block scales"):
        stack.activate({"style": {"unet": {"down": 0.5}}})
    with pytest.raises(ScaleError, match="lbw block weights are for SD"):
        stack.activate({"style": {"lbw": "1,1,1,1,1,1,1,1,1,1,1,1"}})
    after = module_weights(pipe)
    assert all(torch.equal(before[m], after[m]) for m in before)
    # a block the adapter has no layer in: reported, not silently ignored
    tensors = {k: v for k, v in load_file(str(style)).items() if "transformer_blocks.0." not in k or "single" in k}
    save_file(tensors, str(tmp_path / "no-block-0.safetensors"), metadata={"format": "pt"})
    stack.load("partial", tmp_path / "no-block-0.safetensors")
    with caplog.at_level(logging.WARNING, logger="lorastack.core.stack"):
        stack.activate({"partial": {"transformer": {f"{group}.0": 0.0}}})
        stack.deactivate()
        stack.activate({"partial": {"transformer": {f"{group}.0": 0.0}}})
    assert caplog.text.count(f"scale for {group}.0 changes nothing") == 1  # said once, not at every activation


def test_other_families_are_refused_before_any_weight_changes(tiny_flux_pipe, tiny_sd3_pipe, tiny_sdxl_pipe, tmp_path):
    flux_file = peft_lora_file(tiny_flux_pipe, tmp_path / "flux.safetensors")
    sd3_file = peft_lora_file(tiny_sd3_pipe, tmp_path / "sd3.safetensors")
    assert read_adapter(flux_file).family == "flux" and read_adapter(sd3_file).family == "sd3"
    for pipe, wrong in ((tiny_flux_pipe, sd3_file), (tiny_sd3_pipe, flux_file), (tiny_sdxl_pipe, flux_file)):
        before = module_weights(pipe)
        with pytest.raises(IncompatibleAdapterError, match="is for .* but the base is"):
            AdapterStack(pipe).load("wrong", wrong)
        after = module_weights(pipe)
        assert all(torch.equal(before[m], after[m]) for m in before)


@pytest.mark.parametrize("kind", ["lora", "lokr"])
def test_fused_kohya_layers_patch_each_projection_with_its_rows(tiny_flux_pipe, kind):
    from lorastack.adapters import parse_state_dict
    from lorastack.adapters.slices import RowSliceLayer
    from lorastack.core.modules import ModuleIndex
    from lorastack.testing.transformer_adapters import make_original_lora, original_deltas, original_state_dict

    layers = make_original_lora(tiny_flux_pipe, "flux", kind=kind, seed=5)
    adapter = parse_state_dict(original_state_dict(layers, "kohya"))
    want = original_deltas(layers)  # computed from the fused matrices, without lorastack's reader
    base = module_weights(tiny_flux_pipe)
    stack = AdapterStack(tiny_flux_pipe)
    stack.load("fused", adapter)
    loaded = stack.get("fused").layers
    q, k = (loaded[f"transformer.single_transformer_blocks.0.attn.to_{p}"] for p in "qk")
    if kind == "lokr":  # the projections' slices keep one fused parent on the device, not a copy each
        assert isinstance(q, RowSliceLayer) and q.parent is k.parent
    else:
        assert q.down is k.down
    stack.activate({"fused": 0.5})
    index = ModuleIndex(tiny_flux_pipe)
    for name, delta in want.items():
        patched = index.get(name).weight.detach()
        assert torch.allclose(patched, base[name] + 0.5 * delta.reshape(patched.shape), atol=1e-6), name
    stack.deactivate()
    assert all(torch.equal(index.get(m).weight, base[m]) for m in base)
