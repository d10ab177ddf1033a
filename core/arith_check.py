"""``--check-prompts``: the error of an arithmetic result where users look at it, in pixels.

The original (the input stack, the unresized adapter, the fine-tuned model) and the result generate the same prompts
on the same seeds, and the images are compared: PSNR (dB, ``inf`` when identical) and the largest difference of
one 8-bit channel value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .arith import ArithmeticInputError

#: at most this many prompts (each costs two generations)
MAX_PROMPTS = 16


def parse_prompts(text: str | None) -> list[str]:
    """``"a cat|a dog"`` → the prompts (empty parts dropped), bounded in number and length."""
    if not text:
        return []
    prompts = [p.strip() for p in text.split("|") if p.strip()]
    if not prompts:
        raise ArithmeticInputError("--check-prompts holds no prompt; separate prompts with |")
    if len(prompts) > MAX_PROMPTS:
        raise ArithmeticInputError(f"--check-prompts gives {len(prompts)} prompts; at most {MAX_PROMPTS}")
    return prompts


@dataclass
class Side:
    """One side of the comparison: a generator and the stack (name → scale) active while it draws."""

    generator: Any
    stack: dict[str, Any]


def image_difference(a, b) -> dict[str, float]:
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
    return {"psnr_db": psnr, "max_difference": int(np.max(np.abs(x - y)))}


def compare(
    reference: Side,
    candidate: Side,
    prompts: list[str],
    *,
    seed: int = 0,
    steps: int = 20,
    size: int | None = None,
) -> dict[str, Any]:
    """Generate every prompt on both sides with the same seed; PSNR and max difference per prompt and worst."""
    from .generate import GenerateOptions

    rows = []
    for i, prompt in enumerate(prompts):
        images = []
        for side in (reference, candidate):
            options = GenerateOptions(prompt, steps=steps, seed=seed + i, width=size, height=size, adapters=side.stack)
            images.append(side.generator.generate(options)[0].image)
        rows.append({"prompt": prompt, "seed": seed + i, **image_difference(*images)})
    psnrs = [r["psnr_db"] for r in rows]
    return {
        "prompts": rows,
        "min_psnr_db": min(psnrs),
        "max_difference": max(r["max_difference"] for r in rows),
        "steps": steps,
    }


def json_ready(check: dict[str, Any]) -> dict[str, Any]:
    """``inf`` PSNR (identical images) written as the text ``"inf"``, which JSON can hold."""
    from .arith_result import replace_floats

    return replace_floats(check, lambda v: "inf" if math.isinf(v) else v)
