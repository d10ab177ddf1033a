"""The adapter stack: diffusers parity, exact restore, switching cost, compatibility checks, rollback."""

import logging
import random

import pytest
import torch
from adapter_cases import make_case
from stack_helpers import lycoris_adapter

from lorastack.adapters import read_adapter, write_adapter
from lorastack.core.errors import IncompatibleAdapterError, ScaleError, UnknownAdapterError
from lorastack.core.stack import AdapterStack
from lorastack.testing.adapters import module_weights
from lorastack.testing.models import load_pipeline


def latents(pipe, prompt="a photo of a red cat"):
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=2, height=64, width=64, generator=g, output_type="latent").images


@pytest.fixture(params=["sd1", "sdxl"])
def setup(request, tiny_pipe_dir, tmp_path):
    folder = tiny_pipe_dir(request.param)
    pipe = load_pipeline(folder)
    style = make_case(pipe, "peft", tmp_path / "style.safetensors", seed=1)
    subject = make_case(pipe, "kohya-locon", tmp_path / "subject.safetensors", seed=2)
    return folder, pipe, style, subject


def test_zero_scales_equal_the_base_exactly(setup):
    _, pipe, style, subject = setup
    base = latents(pipe)
    stack = AdapterStack(pipe)
    stack.load("style", style)
    stack.load("subject", subject)
    stack.activate({"style": 0.0, "subject": 0.0})
    assert torch.equal(latents(pipe), base)
    stack.activate({"style": 0.8, "subject": 0.5})
    assert not torch.equal(latents(pipe), base)


def test_stack_matches_diffusers_set_adapters(setup):
    folder, pipe, style, subject = setup
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
    assert (ours - latents(load_pipeline(folder))).abs().max() > 0.1  # and the stack does something


def test_kohya_and_diffusers_files_of_one_adapter_give_the_same_images(setup, tmp_path):
    _, pipe, style, _ = setup
    as_kohya = write_adapter(read_adapter(style), tmp_path / "style-kohya.safetensors", "kohya")
    stack = AdapterStack(pipe)
    stack.load("diffusers_file", style)
    stack.load("kohya_file", as_kohya)
    stack.activate({"diffusers_file": 0.7})
    a = latents(pipe)
    stack.activate({"kohya_file": 0.7})
    assert torch.equal(latents(pipe), a)


def _random_scale(rng):
    return rng.choice(
        [
            round(rng.uniform(-1, 1.5), 3),
            0.0,
            {"unet": round(rng.uniform(0, 1), 2), "text_encoder": 0.0},
            {"scale": 0.5, "unet": {"down": 0.2, "mid": 0.0, "up": {"block_1": 0.7}}},
        ]
    )


@pytest.mark.parametrize(
    "dtype, operations",
    [pytest.param(torch.float32, 1000, marks=pytest.mark.slow), (torch.float32, 120), (torch.float16, 150)],
)
def test_base_is_restored_exactly_after_random_operations(tiny_sd1_dir, tmp_path, dtype, operations):
    pipe = load_pipeline(tiny_sd1_dir).to(dtype)
    sources = {
        "style": make_case(pipe, "peft", tmp_path / "a.safetensors", seed=1),
        "subject": make_case(pipe, "kohya-locon", tmp_path / "b.safetensors", seed=2),
        "lyco": lycoris_adapter(pipe, seed=3),
        "dora": make_case(pipe, "peft-dora", tmp_path / "d.safetensors", seed=4),
    }
    base = module_weights(pipe)
    stack = AdapterStack(pipe)
    # the reference: the same adapters on a pristine copy, each state activated from scratch
    fresh = AdapterStack(load_pipeline(tiny_sd1_dir).to(dtype))
    for name, source in sources.items():
        stack.load(name, source)
        fresh.load(name, source)
    rng = random.Random(0)
    for i in range(operations):
        op = rng.choice(["activate", "activate", "switch", "scale", "deactivate", "fuse", "unfuse", "reload"])
        names = stack.loaded
        if op in ("activate", "switch"):
            chosen = rng.sample(names, rng.randint(1, len(names)))
            stack.activate({n: _random_scale(rng) for n in chosen})
        elif op == "scale" and names:
            stack.set_scale(rng.choice(names), _random_scale(rng))
        elif op == "deactivate":
            stack.deactivate()
        elif op == "fuse":
            stack.fuse()
        elif op == "unfuse":
            stack.unfuse()
        elif op == "reload":
            name = rng.choice(names)
            stack.unload(name)
            stack.load(name, sources[name])
        if i % 97 == 0 or i == operations - 1:  # history never matters: same stack, same bits
            fresh.activate(stack.active if stack.fused else {})
            fresh.deactivate() if not stack.fused else None
            now, want = module_weights(pipe), module_weights(fresh.pipe)
            assert all(torch.equal(now[m], want[m]) for m in base), f"after operation {i} ({op})"
            fresh.deactivate()
    stack.deactivate()
    restored = module_weights(pipe)
    assert all(torch.equal(restored[m], base[m]) for m in base)


def test_patched_weights_follow_the_formula(tiny_sd1_dir, tmp_path):
    pipe = load_pipeline(tiny_sd1_dir)
    base = module_weights(pipe)
    stack = AdapterStack(pipe)
    stack.load("a", make_case(pipe, "peft", tmp_path / "a.safetensors", seed=1))
    stack.load("b", make_case(pipe, "kohya-locon", tmp_path / "b.safetensors", seed=2))
    stack.load("lyco", lycoris_adapter(pipe, seed=3))
    stack.activate({"a": 0.8, "b": -0.5, "lyco": 0.3})
    now = module_weights(pipe)
    for module in base:
        expected = base[module].clone()
        for name, s in (("a", 0.8), ("b", -0.5), ("lyco", 0.3)):
            layer = stack.get(name).layers.get(module)
            if layer is not None:
                expected += s * (layer.delta(base[module]) if layer.is_dora else layer.delta(shape=base[module].shape))
        torch.testing.assert_close(now[module], expected, atol=2e-6, rtol=1e-5)


def test_switching_touches_only_modules_that_change(tiny_sd1_dir, tmp_path):
    pipe = load_pipeline(tiny_sd1_dir)
    stack = AdapterStack(pipe)
    unet_only = read_adapter(make_case(pipe, "peft", tmp_path / "u.safetensors", seed=1))
    unet_layers = {n: layer for n, layer in unet_only.layers.items() if n.startswith("unet.")}
    te_layers = {n: layer for n, layer in unet_only.layers.items() if n.startswith("text_encoder.")}
    stack.load("unet_part", unet_only.select(unet_layers))
    stack.load("te_part", unet_only.select(te_layers))
    stack.load("te_other", unet_only.select(te_layers))
    stack.activate({"unet_part": 0.8, "te_part": 0.5})
    assert stack.last_changed == len(unet_layers) + len(te_layers)
    stack.activate({"unet_part": 0.8, "te_other": 0.5})  # the UNet part is unchanged: not rewritten
    assert stack.last_changed == len(te_layers)
    stack.activate({"unet_part": 0.8, "te_other": 0.5})
    assert stack.last_changed == 0
    for i in range(20):  # adapters loaded but inactive cost nothing
        stack.load(f"idle{i}", unet_only)
    stack.activate({"unet_part": 0.8, "te_part": 0.5})
    assert stack.last_changed == len(te_layers)


def test_per_component_and_per_block_scales(tiny_sd1_dir, tmp_path):
    pipe = load_pipeline(tiny_sd1_dir)
    base = module_weights(pipe)
    stack = AdapterStack(pipe)
    stack.load("a", make_case(pipe, "kohya-locon", tmp_path / "a.safetensors", seed=1))
    layers = stack.get("a").layers
    spec = {"unet": {"down": {"block_1": [0.25, 0.5]}, "mid": 0.0, "up": 2.0}, "text_encoder": 0.0}
    stack.activate({"a": spec})
    now = module_weights(pipe)

    def applied(module):
        return (now[module] - base[module]) / layers[module].delta(shape=tuple(base[module].shape))

    te = [m for m in layers if m.startswith("text_encoder.")]
    assert te and all(torch.equal(now[m], base[m]) for m in te)
    assert all(torch.equal(now[m], base[m]) for m in layers if m.startswith("unet.mid_block."))
    probe = "unet.down_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q"
    assert torch.allclose(applied(probe), torch.tensor(0.5), atol=1e-3)
    probe = "unet.down_blocks.1.resnets.0.conv1"
    assert torch.allclose(applied(probe), torch.tensor(0.25), atol=1e-3)
    probe = "unet.down_blocks.0.attentions.0.proj_in"  # down block 0 not named: 1.0
    assert torch.allclose(applied(probe), torch.tensor(1.0), atol=1e-3)
    probe = "unet.up_blocks.2.attentions.0.proj_out"
    assert torch.allclose(applied(probe), torch.tensor(2.0), atol=1e-3)

    lbw = [0.0] + [1.0] * 6 + [0.5] + [0.0] * 9  # SD1 17 blocks: BASE, IN01…IN08, MID, OUT03…OUT11
    stack.activate({"a": {"lbw": lbw}})
    now = module_weights(pipe)
    assert all(torch.equal(now[m], base[m]) for m in te)  # BASE = 0
    assert torch.allclose(applied("unet.mid_block.attentions.0.proj_in"), torch.tensor(0.5), atol=1e-3)
    assert torch.equal(now["unet.up_blocks.3.attentions.2.proj_out"], base["unet.up_blocks.3.attentions.2.proj_out"])


def test_family_mismatch_is_an_error_naming_both(tiny_sd1_dir, tiny_sdxl_dir, tmp_path):
    xl_file = make_case(load_pipeline(tiny_sdxl_dir), "peft", tmp_path / "xl.safetensors")
    pipe = load_pipeline(tiny_sd1_dir)
    base = module_weights(pipe)
    stack = AdapterStack(pipe)
    with pytest.raises(IncompatibleAdapterError, match=r"'xl' .* is for SDXL but the base is SD 1.x"):
        stack.load("xl", xl_file)
    assert stack.loaded == [] and all(torch.equal(base[m], w) for m, w in module_weights(pipe).items())


def test_no_matching_module_and_partial_matches(tiny_sd1_dir, tmp_path, caplog):
    pipe = load_pipeline(tiny_sd1_dir)
    stack = AdapterStack(pipe)
    adapter = read_adapter(make_case(pipe, "kohya", tmp_path / "a.safetensors"))
    unet = {n: layer for n, layer in adapter.layers.items() if n.startswith("unet.")}
    foreign = {n.replace("unet.", "unet.imaginary_blocks.", 1): layer for n, layer in unet.items()}
    from lorastack.adapters import Adapter

    with pytest.raises(IncompatibleAdapterError, match="matches no module of the base"):
        stack.load("foreign", Adapter(foreign))
    half = dict(list(unet.items())[:10]) | dict(list(foreign.items())[10:14])
    with caplog.at_level(logging.WARNING):
        report = stack.load("half", Adapter(half))
    assert len(report.matched) == 10 and len(report.unmatched) == 4 and not report.complete
    assert "10 of 14 layers matched" in caplog.text
    assert all(reason == "no such module in the base" for reason in report.unmatched.values())
    with pytest.raises(IncompatibleAdapterError, match="10 of 14 layers matched"):
        stack.load("strict", Adapter(half), strict=True)


def test_bad_names_and_scales_change_nothing(tiny_sd1_dir, tmp_path):
    pipe = load_pipeline(tiny_sd1_dir)
    stack = AdapterStack(pipe)
    stack.load("style", make_case(pipe, "peft", tmp_path / "a.safetensors"))
    stack.activate({"style": 0.5})
    before = module_weights(pipe)
    with pytest.raises(UnknownAdapterError, match=r"'nope' not loaded; loaded adapters: style"):
        stack.activate({"style": 1.0, "nope": 1.0})
    for bad in ("strong", float("nan"), {"unet": "x"}, {"foo": 1}, {"lbw": [1, 2, 3]}):
        with pytest.raises(ScaleError):
            stack.activate({"style": bad})
    assert stack.active == {"style": 0.5}
    assert all(torch.equal(before[m], w) for m, w in module_weights(pipe).items())
    with pytest.raises(ScaleError, match="invalid adapter name"):
        stack.load("has space", make_case(pipe, "peft", tmp_path / "b.safetensors"))
    stack.load("me/style:v1", tmp_path / "b.safetensors")  # a registry reference is a name as it is written
    assert "me/style:v1" in stack.loaded


def test_a_failure_midway_puts_everything_back(tiny_sd1_dir, tmp_path):
    pipe = load_pipeline(tiny_sd1_dir)
    stack = AdapterStack(pipe)
    stack.load("good", make_case(pipe, "peft", tmp_path / "a.safetensors", seed=1))
    poisoned = read_adapter(make_case(pipe, "peft", tmp_path / "b.safetensors", seed=2))
    last = sorted(poisoned.layers)[-1]
    poisoned.layers[last].up.fill_(3e38)  # finite in the file, but the delta overflows
    stack.load("poisoned", poisoned)
    stack.activate({"good": 0.5})
    before = module_weights(pipe)
    with pytest.raises(IncompatibleAdapterError, match=f"make the weight of {last} non-finite"):
        stack.activate({"good": 1.0, "poisoned": 1.0})
    assert stack.active == {"good": 0.5}
    assert all(torch.equal(before[m], w) for m, w in module_weights(pipe).items())


def test_the_pipeline_stays_a_normal_diffusers_pipeline(tiny_sd1_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = load_pipeline(tiny_sd1_dir)
    stack = AdapterStack(pipe)
    stack.load("style", make_case(pipe, "peft", tmp_path / "a.safetensors"))
    stack.activate({"style": 1.0})
    patched = latents(pipe)
    baked = stack.detach()
    assert type(baked) is StableDiffusionPipeline and stack.loaded == []
    assert torch.equal(latents(baked), patched)  # detach keeps the adapter in the weights
    assert not any("lora" in name for name, _ in baked.unet.named_modules())  # no wrappers anywhere
