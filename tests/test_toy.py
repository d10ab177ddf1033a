"""The shipped toy base: small, loads like any base, and really learned its colours."""

from __future__ import annotations

import re

import pytest
import torch

from lorastack import toy
from lorastack.core.base import guidance_kwargs, recommended

SEEDS = list(range(10))


@pytest.fixture(scope="module")
def toy_pipe():
    from lorastack.core import load_base

    pipe = load_base("toy")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_it_is_small_and_a_normal_diffusers_folder(toy_pipe):
    from diffusers import StableDiffusionPipeline

    size = sum(p.stat().st_size for p in toy.TOY_DIR.rglob("*") if p.is_file())
    assert size <= 20 * 2**20, size
    assert isinstance(toy_pipe, StableDiffusionPipeline)
    assert (toy.TOY_DIR / "model_index.json").exists() and (toy.TOY_DIR / "TRAINING.md").exists()
    assert toy.STYLE_ADAPTER.exists()
    assert recommended(toy_pipe, "guidance") == 1.5  # its lorastack.json: every colour right at 1-2, not at 3


def test_it_loads_with_plain_diffusers_and_generates():
    """What a diffusers user would do, without lorastack: every component in one dtype, one step runs."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(toy.TOY_DIR))
    pipe.set_progress_bar_config(disable=True)
    assert {pipe.text_encoder.dtype, pipe.unet.dtype, pipe.vae.dtype} == {torch.float32}
    image = pipe("a red circle on a white background", num_inference_steps=1, height=toy.SIZE, width=toy.SIZE,
                 generator=torch.Generator().manual_seed(0)).images[0]  # fmt: skip
    assert image.size == (toy.SIZE, toy.SIZE)


def test_the_style_adapter_has_a_name_and_no_build_paths():
    from lorastack.adapters import read_adapter

    metadata = read_adapter(toy.STYLE_ADAPTER).metadata.raw
    assert metadata["modelspec.title"] == metadata["ss_output_name"] == "toy-style"
    for key, value in metadata.items():
        assert not re.search(r"(^|[\s\"'=])(/|[A-Za-z]:\\)", value), (key, value)  # no absolute path anywhere
    assert 'data = "toy-style-data"' in metadata["lorastack.recipe"]


@pytest.mark.parametrize(
    "colour", [c if c in ("red", "yellow") else pytest.param(c, marks=pytest.mark.slow) for c in toy.SHAPE_COLOURS]
)
def test_it_learned_each_colour(toy_pipe, colour):
    """For each colour word, that colour dominates (background aside) in at least 80 % of a fixed set of seeds, at
    the toy's recommended guidance."""
    dominant = toy.colour_check(toy_pipe, colour, SEEDS)
    assert sum(d == colour for d in dominant) >= 0.8 * len(SEEDS), dominant


def test_it_has_never_seen_the_demo_concept(toy_pipe):
    images = toy_pipe(["a aawxbc on a white background"] * 4, num_inference_steps=20,
                      height=toy.SIZE, width=toy.SIZE, **guidance_kwargs(toy_pipe),
                      generator=[torch.Generator().manual_seed(s) for s in range(4)]).images  # fmt: skip
    assert toy.concept_score(images, "yellow") < 0.05


def test_the_drawing_and_scores():
    image = toy.draw("star", "purple", "white", scale=0.3)
    shares = toy.colour_shares(image)
    assert 0.1 < shares["purple"] < 0.4 and shares["white"] > 0.5
    assert toy.dominant_colour(toy.draw("circle", "red", "black"), "black") == "red"
    filled = toy.colour_shares(toy.draw("square", "blue", "white"))["blue"]
    assert toy.colour_shares(toy.draw("square", "blue", "white", outline=True))["blue"] < 0.6 * filled


def test_an_adapter_for_the_toy_loads_whatever_its_topology_suggests(toy_pipe, tmp_path):
    """The toy has SDXL's topology (no attention in its first level): a header-less attention-only adapter probes as
    SDXL, yet every layer fits the toy's modules, so the stack takes it (tests/test_stack.py: a real mismatch is still
    refused)."""
    from adapter_cases import make_case

    from lorastack.adapters import read_adapter
    from lorastack.core import AdapterStack

    path = make_case(toy_pipe, "peft-nometa", tmp_path / "toy-lora.safetensors")
    adapter = read_adapter(path)
    assert adapter.family == "sdxl" and "attention in the first up block" in adapter.probe.evidence
    stack = AdapterStack(toy_pipe)
    report = stack.load("toy-lora", path)
    assert report.complete and report.matched
    before = toy_pipe.unet.up_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight.clone()
    stack.activate({"toy-lora": 1.0})
    assert not torch.equal(before, toy_pipe.unet.up_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight)
    stack.deactivate()
    assert torch.equal(before, toy_pipe.unet.up_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight)
    stack.detach()


def test_generate_takes_the_base_recommended_guidance_unless_told(toy_pipe):
    from lorastack.core import GenerateOptions, Generator

    generator = Generator(toy_pipe)
    prompt = "a red circle on a white background"
    (result,) = generator.generate(GenerateOptions(prompt, steps=2, seed=1))
    assert result.recipe["guidance"] == 1.5
    (result,) = generator.generate(GenerateOptions(prompt, steps=2, seed=1, guidance=4.0))
    assert result.recipe["guidance"] == 4.0


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "not readable JSON"),
        ('{"recommended": [1.5]}', "'recommended' must be an object"),
        ('{"recommended": {"cfg": 2}}', "unknown setting 'cfg'; known: guidance"),
        ('{"recommended": {"guidance": -1}}', "guidance must be a float in (0, 100], got -1"),
        ('{"recommended": {"guidance": "high"}}', "guidance must be a float in (0, 100], got 'high'"),
        ('{"recommended": {"guidance": 1e9}}', "guidance must be a float in (0, 100], got 1000000000.0"),
    ],
)
def test_a_broken_lorastack_json_fails_before_the_weights_load(text, message, tmp_path, monkeypatch):
    import shutil

    from lorastack.core import base
    from lorastack.core.errors import BaseModelError

    folder = shutil.copytree(toy.TOY_DIR, tmp_path / "toy")
    (folder / base.RECOMMENDED_FILE).write_text(text)
    monkeypatch.setattr(base, "_load_folder", lambda *a: pytest.fail("loaded the weights"))
    with pytest.raises(BaseModelError, match=re.escape(message)) as e:
        base.load_base(str(folder))
    assert str(folder / base.RECOMMENDED_FILE) in str(e.value)


def test_a_demo_rerun_reuses_its_registry_version(tmp_path, lorastack_home):
    """The same tensors (a rerun of the seeded demo, in any folder) give the same version, not a new one."""
    import shutil

    from lorastack.registry import Registry
    from lorastack.toy.demo import register

    first = shutil.copy(toy.STYLE_ADAPTER, tmp_path / "a.safetensors")
    again = tmp_path / "again.safetensors"
    from safetensors.torch import load_file, save_file

    # other bytes (the metadata), the same tensors
    save_file(load_file(first), again, metadata={"lorastack.recipe": 'data = "elsewhere"'})
    assert register(first, "demo/aawxbc", tmp_path) == ("demo/aawxbc@1", False)
    assert register(again, "demo/aawxbc", tmp_path) == ("demo/aawxbc@1", True)
    assert [v.ref for v in Registry().versions("demo/aawxbc")] == ["demo/aawxbc@1"]
    assert Registry().resolve("demo/aawxbc").trigger_words == ["aawxbc"]


def test_the_demo_summary_smooths_over_any_step_count():
    from lorastack.toy.demo import loss_means

    assert loss_means([4.0, 2.0, 1.0]) == (4.0, 1.0)  # fewer than ten steps: one step each end
    assert loss_means([1.0] * 10 + [0.5] * 10) == (1.0, 0.5)  # tenths of 20 steps: two each
    assert loss_means([]) == (0.0, 0.0)
