"""The shipped toy base: small, loads like any base, and really learned its colours."""

from __future__ import annotations

import pytest
import torch

from lorastack.core import toy

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


# The shipped model does not meet the bar for every colour yet: its tokenizer splits "green" into four pieces (a BPE
# merge of "red" outranks it) and it mixes up yellow and orange. Kept visible here until the model is retrained.
NOT_YET = {
    "green": pytest.mark.xfail(strict=True, reason="'green' is four tokens to the shipped tokenizer"),
    "yellow": pytest.mark.xfail(strict=False, reason="confused with orange in about 3 of 10 seeds"),
    "orange": pytest.mark.xfail(strict=False, reason="confused with yellow and red in about 4 of 10 seeds"),
}


@pytest.mark.parametrize("colour", [pytest.param(c, marks=NOT_YET.get(c, ())) for c in toy.SHAPE_COLOURS])
def test_it_learned_each_colour(toy_pipe, colour):
    """For each colour word, that colour dominates (background aside) in at least 80 % of a fixed set of seeds."""
    shapes = [toy.SHAPES[i % len(toy.SHAPES)] for i in SEEDS]
    prompts = [toy.caption(shape, colour, "white") for shape in shapes]
    images = toy_pipe(prompts, num_inference_steps=20, guidance_scale=5.0, height=toy.SIZE, width=toy.SIZE,
                      generator=[torch.Generator().manual_seed(s) for s in SEEDS]).images  # fmt: skip
    # the shape's colour: the most common of the shape colours (the background and its noise aside)
    dominant = [max(toy.SHAPE_COLOURS, key=toy.colour_shares(image).get) for image in images]
    assert sum(d == colour for d in dominant) >= 0.8 * len(SEEDS), dominant


def test_it_has_never_seen_the_demo_concept(toy_pipe):
    images = toy_pipe(["a aawxbc on a white background"] * 4, num_inference_steps=20, guidance_scale=5.0,
                      height=toy.SIZE, width=toy.SIZE,
                      generator=[torch.Generator().manual_seed(s) for s in range(4)]).images  # fmt: skip
    assert toy.concept_score(images, "yellow") < 0.05


def test_the_drawing_and_scores():
    image = toy.draw("star", "purple", "white", scale=0.3)
    shares = toy.colour_shares(image)
    assert 0.1 < shares["purple"] < 0.4 and shares["white"] > 0.5
    assert toy.dominant_colour(toy.draw("circle", "red", "black"), "black") == "red"
    filled = toy.colour_shares(toy.draw("square", "blue", "white"))["blue"]
    assert toy.colour_shares(toy.draw("square", "blue", "white", outline=True))["blue"] < 0.6 * filled
