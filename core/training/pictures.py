"""The pictures a run leaves: ``loss.png`` (matplotlib, with axes and a legend) and sample grids (laid out by
:func:`lorastack.core.grids.labelled_grid`) with their recipe."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .progress import EMA_BETA

#: the PNG text chunk holding a sample grid's recipe (generation recipes use ``lorastack``: a grid is not one)
SAMPLE_RECIPE_KEY = "lorastack-sample"


def smoothed(losses: Sequence[float], beta: float = EMA_BETA) -> list[float]:
    """The bias-corrected exponential moving average of ``losses`` (what the progress line shows)."""
    out, ema, weight = [], 0.0, 0.0
    for value in losses:
        ema, weight = beta * ema + (1 - beta) * value, beta * weight + (1 - beta)
        out.append(ema / weight)
    return out


def loss_plot_png(losses: Sequence[float], validation: Mapping[str, float] | None = None) -> bytes:
    """``loss.png``: the loss of each step, its moving average and the validation losses, on labelled axes."""
    buffer = io.BytesIO()
    loss_figure(losses, validation).savefig(buffer, format="png")
    return buffer.getvalue()


def loss_figure(losses: Sequence[float], validation: Mapping[str, float] | None = None):
    """The matplotlib ``Figure`` of :func:`loss_plot_png` (no display or pyplot state involved)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4), dpi=100, layout="constrained")
    axes = figure.subplots()
    steps = range(1, len(losses) + 1)
    axes.plot(steps, losses, color="#9aa7d8", linewidth=0.8, label="loss (each step)")
    axes.plot(steps, smoothed(losses), color="#1f3fbf", linewidth=2, label=f"smoothed (EMA {EMA_BETA:g})")
    if validation:
        points = sorted((int(step), value) for step, value in validation.items())
        axes.plot(*zip(*points), "o", color="#d9482b", label="validation loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (MSE)")
    axes.set_xlim(1, max(2, len(losses)))
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper right")
    axes.set_title(f"training loss, {len(losses)} steps")
    return figure


def sample_png(grid, recipe: Mapping[str, Any]) -> bytes:
    """The grid as PNG bytes with its recipe (JSON) in a text chunk and a one-line summary as its description."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(SAMPLE_RECIPE_KEY, json.dumps(recipe, sort_keys=True, default=str))
    seeds = ", ".join(str(s) for s in recipe.get("seeds", ()))
    info.add_text(
        "Description",
        f"training samples at step {recipe.get('step')}: {recipe.get('sample_steps')} steps, guidance "
        f"{recipe.get('guidance')}, seeds {seeds}, {recipe.get('width')}x{recipe.get('height')}",
    )
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def checkpoint_samples(engine, done: int) -> bytes | None:
    """The validation prompts sampled at this checkpoint: a labelled grid (PNG bytes, with its recipe)."""
    prompts = [p.strip() for p in engine.options.validation_prompts.split("|") if p.strip()]
    every = engine.options.validate_every
    if not prompts or (every and done % every and done != engine.options.steps):
        return None
    import torch

    from ..base_settings import pipe_settings
    from ..grids import labelled_grid
    from .conditioning import pipeline_kwargs

    size, guidance = engine.options.resolution, pipe_settings(engine.pipe).guidance
    extra = pipeline_kwargs(engine.pipe, engine.options.max_sequence_length)  # the T5 length of Flux and SD3
    seeds = [engine.options.seed + i for i in range(len(prompts))]
    images = []
    with torch.no_grad():
        for prompt, seed in zip(prompts, seeds):
            g = torch.Generator().manual_seed(seed)
            image = engine.pipe(prompt, num_inference_steps=engine.options.sample_steps, generator=g, height=size,
                                width=size, guidance_scale=guidance, **extra).images[0]  # fmt: skip
            images.append(image)
    grid = labelled_grid([images], prompts, [f"step {done}"])
    recipe = {
        "trainer": engine.run.identity.get("trainer"), "base": engine.run.identity.get("base"),
        "run": str(engine.run.path), "step": done, "adapter": f"checkpoints/step-{done:06d}/adapter.safetensors",
        "prompts": prompts, "seeds": seeds, "sample_steps": engine.options.sample_steps, "guidance": guidance,
        "width": size, "height": size, "scheduler": type(engine.pipe.scheduler).__name__,
    }  # fmt: skip
    return sample_png(grid, recipe)
