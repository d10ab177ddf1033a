"""The toy world: coloured shapes on plain backgrounds, the shipped toy base model that learned them, and scores.

The toy base (``--base toy``) is a real Stable Diffusion pipeline (VAE, cross-attention UNet, CLIP text encoder,
tokenizer, scheduler) trained by ``tools/train_toy.py`` on images drawn here. It knows the shapes and colours below;
it has never seen a star, which is what the demo teaches it. Its VAE learned only these colours, so it cannot draw
a colour outside them (purple comes out as something else).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from pathlib import Path

TOY_DIR = Path(__file__).parent / "base"
STYLE_ADAPTER = Path(__file__).parent / "style.safetensors"
SIZE = 64

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "orange": (240, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
#: what the toy base was trained on
SHAPES = ("circle", "square", "triangle")
SHAPE_COLOURS = ("red", "green", "blue", "yellow", "orange")
BACKGROUNDS = ("white", "black", "gray")
#: what the demo teaches it (never in the base's training set)
NEW_COLOURS = {"purple": (150, 50, 200)}
NEW_SHAPES = ("star",)
ALL_COLOURS = {**COLOURS, **NEW_COLOURS}


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    raise ValueError(f"unknown shape {shape!r}; shapes: {', '.join(SHAPES + NEW_SHAPES)}")


def draw(shape: str, colour: str, background: str = "white", *, size: int = SIZE, scale: float = 0.3,
         center: tuple[float, float] = (0.5, 0.5), outline: bool = False):  # fmt: skip
    """One image: a ``colour`` ``shape`` of radius ``scale``·size at ``center`` (fractions) on ``background``.

    ``outline`` draws only the shape's edge (the built-in style adapter's look).
    """
    from PIL import Image, ImageDraw

    big = size * 4  # draw large and downsample: smooth edges
    image = Image.new("RGB", (big, big), ALL_COLOURS[background])
    canvas = ImageDraw.Draw(image)
    cx, cy, r = center[0] * big, center[1] * big, scale * big
    paint = {"outline": ALL_COLOURS[colour], "width": max(1, big // 16)} if outline else {"fill": ALL_COLOURS[colour]}
    if shape == "circle":
        canvas.ellipse([cx - r, cy - r, cx + r, cy + r], **paint)
    else:
        canvas.polygon(_polygon(shape, cx, cy, r), **paint)
    return image.resize((size, size), Image.LANCZOS)


def caption(shape: str, colour: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def sample(rng: random.Random, shapes=SHAPES, colours=SHAPE_COLOURS, backgrounds=BACKGROUNDS, outline=False):
    """A random (image, caption) of the toy world."""
    shape, colour = rng.choice(shapes), rng.choice(colours)
    background = rng.choice([b for b in backgrounds if b != colour])
    scale = rng.uniform(0.18, 0.34)
    center = (rng.uniform(scale + 0.04, 0.96 - scale), rng.uniform(scale + 0.04, 0.96 - scale))
    image = draw(shape, colour, background, scale=scale, center=center, outline=outline)
    return image, caption(shape, colour, background)


def write_dataset(folder: str | Path, count: int, seed: int = 0, **choices) -> Path:
    """A folder of toy images with ``.txt`` captions (what the folder dataset source reads)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for index in range(count):
        image, text = sample(rng, **choices)
        image.save(folder / f"{index:04d}.png")
        (folder / f"{index:04d}.txt").write_text(text)
    return folder


def colour_shares(image, background: str | None = None) -> dict[str, float]:
    """Share of the image's pixels nearest each named colour (of all colours, new ones included)."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3)
    names = list(ALL_COLOURS)
    palette = np.array([ALL_COLOURS[n] for n in names], dtype=np.float32)
    nearest = ((pixels[:, None, :] - palette[None]) ** 2).sum(-1).argmin(1)
    counts = np.bincount(nearest, minlength=len(names)) / len(pixels)
    return {name: float(counts[i]) for i, name in enumerate(names)}


def dominant_colour(image, background: str) -> str:
    """The colour covering most of the image apart from its background."""
    shares = colour_shares(image)
    shares.pop(background, None)
    return max(shares, key=shares.get)


def concept_score(images: Iterable, colour: str) -> float:
    """Mean share of pixels nearest ``colour``: how far images moved toward a concept drawn in that colour."""
    images = list(images)
    return sum(colour_shares(image)[colour] for image in images) / max(len(images), 1)


def colour_check(pipe, colour: str, seeds: Iterable[int] = range(10), *, steps: int = 20,
                 guidance: float | None = None):  # fmt: skip
    """The shape colour that dominates each image ``pipe`` draws for ``colour`` (one image per seed).

    Prompts cycle through the shapes on a white background; the dominant colour is the most common of the shape
    colours (the background and its noise aside). What the toy base's colour test and its training script check.
    ``guidance``: default the base's recommended one (the toy's ``lorastack.json``).
    """
    import torch

    from lorastack.core.base import guidance_kwargs

    seeds = list(seeds)
    prompts = [caption(SHAPES[i % len(SHAPES)], colour, "white") for i in range(len(seeds))]
    scale = guidance_kwargs(pipe) if guidance is None else {"guidance_scale": guidance}
    images = pipe(prompts, num_inference_steps=steps, height=SIZE, width=SIZE, **scale,
                  generator=[torch.Generator().manual_seed(s) for s in seeds]).images  # fmt: skip
    return [max(SHAPE_COLOURS, key=colour_shares(image).get) for image in images]
