"""``lorastack demo``: teach the toy base a concept it has never seen, offline, in about a minute on a CPU.

The toy base knows red, green, blue, yellow and orange circles, squares and triangles. The demo draws a few yellow
stars (a shape the base has never seen), names the concept with the rare token ``aawxbc``, trains a DreamBooth LoRA
on them (with prior preservation on captioned pictures of the base's own shapes, so "a green square" stays a green
square), registers it, and writes a grid: the base and the adapter on the same seeds, for a prompt with the token
and one without, and the adapter stacked with the built-in outline style at two scales. The scores are the ``toy``
evaluator's (``lorastack eval --evaluator toy``) on the base's and the adapter's images of both prompts: fidelity to
the training stars' colours on the token prompt, the named colour's share and the colour change against the base on
the plain prompt.

Training is seeded, so running the demo again makes the same tensors: the registry's version of ``demo/aawxbc``
with those tensors is then reused (``reused=True``) instead of adding a new version each run. A run with other
settings (``--steps``, ``--seed``) that trains other tensors adds a version, as any import would.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lorastack import toy

TOKEN = "aawxbc"
TOKEN_PROMPT = f"a {TOKEN} on a white background"
PLAIN_COLOUR = "green"
PLAIN_PROMPT = f"a {PLAIN_COLOUR} square on a white background"
STYLE_SCALES = (0.5, 1.0)
# A colour the toy VAE can draw (it learned only the toy colours) on a shape nobody showed the base.
CONCEPT_COLOUR = "yellow"


@dataclass
class DemoResult:
    grid: Path
    adapter: Path
    registered: str | None
    base_score: float
    adapter_score: float
    seconds: float
    plain_base: float = 0.0  # share of the plain prompt's colour, base and adapter: what prior preservation keeps
    plain_adapter: float = 0.0
    reused: bool = False  # the registry already held a version with these tensors: no new version
    loss_first: float = 0.0  # mean loss of the first and the last tenth of the steps
    loss_last: float = 0.0
    scores: Any = None  # the toy evaluator's Scores (base vs adapter)

    def to_json(self) -> dict:
        return {
            "grid": str(self.grid),
            "adapter": str(self.adapter),
            "registered": self.registered,
            "reused": self.reused,
            "token_prompt": TOKEN_PROMPT,
            "base_score": self.base_score,
            "adapter_score": self.adapter_score,
            "plain_prompt": PLAIN_PROMPT,
            "plain_base": self.plain_base,
            "plain_adapter": self.plain_adapter,
            "loss_first": self.loss_first,
            "loss_last": self.loss_last,
            "seconds": self.seconds,
            "scores": self.scores.as_dict() if self.scores is not None else None,
        }

    def lines(self) -> list[str]:
        """The toy evaluator's table: the base and the adapter, one column per metric."""
        from lorastack.core.evaluation import table_lines

        seeds = ", ".join(str(s) for s in sorted({i.seed for i in self.images}))
        head = f"toy evaluator on {TOKEN_PROMPT!r} (fidelity) and {PLAIN_PROMPT!r} (prompt, leak), seeds {seeds}:"
        return [head, *table_lines(self.scores.rows if self.scores is not None else [])]

    images: list = field(default_factory=list, repr=False)  # the EvalImages the scores came from


def concept_images(folder: Path, count: int, seed: int) -> Path:
    """Yellow stars of several sizes and positions on white: the concept the base has never seen."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for index in range(count):
        scale = rng.uniform(0.24, 0.36)
        center = (rng.uniform(scale + 0.04, 0.96 - scale), rng.uniform(scale + 0.04, 0.96 - scale))
        toy.draw("star", CONCEPT_COLOUR, "white", scale=scale, center=center).save(folder / f"star-{index:02d}.png")
    return folder


def run_demo(
    out: str | Path = "lorastack-demo",
    *,
    steps: int = 300,
    seed: int = 0,
    images: int = 12,
    seeds: int = 4,
    name: str | None = "demo/aawxbc",
    progress: bool = True,
    log: Callable[[str], None] = print,
    options: dict | None = None,
) -> DemoResult:
    from lorastack.adapters.outputs import check_output_dir, check_output_file
    from lorastack.core.base import guidance_kwargs, load_base
    from lorastack.core.base_settings import pipe_settings
    from lorastack.core.grids import labelled_grid
    from lorastack.core.stack import AdapterStack
    from lorastack.core.training.api import train
    from lorastack.paths import data_home

    started = time.perf_counter()
    out = Path(out)
    # before any work: the home (registry, caches) is usable, and the folders and the grid can be written
    data_home()
    for folder in (out, out / "data", out / "class", out / "run"):
        check_output_dir(folder)
    if out.is_dir():
        check_output_file(out / "demo-grid.png", overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_base("toy")
    pipe.set_progress_bar_config(disable=True)
    data = concept_images(out / "data", images, seed)
    log(f"training set: {images} yellow stars in {data} (the base has never seen a star)")
    run_dir = out / "run"
    if run_dir.is_symlink():  # a new demo run each time; the old one's adapter stays registered
        run_dir.unlink()
    elif run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    # prior preservation with the base's own world (captioned toy shapes): the adapter learns what "aawxbc" is
    # without forgetting what "a green square" is
    regular = toy.write_dataset(out / "class", images * 2, seed=seed + 1)
    result = train("dreambooth", "toy", data, register=False, output=run_dir, pipe=pipe, progress=progress, options={
        "token": TOKEN, "instance_prompt": "a {token} on a white background", "class_data": str(regular),
        "steps": steps, "resolution": toy.SIZE, "rank": 8, "learning_rate": 4e-3, "targets": "attention-ff",
        "text_encoder_lr": 1e-3, "batch_size": 4, "latents": "mean", "seed": seed, "random_flip": True,
        **(options or {}),
    })  # fmt: skip
    first, last = loss_means(result.losses)
    registered, reused = register(result.adapter_path, name, data) if name is not None else (None, False)
    where = f"{registered} ({'the same tensors as before: reused' if reused else 'new version'})" if registered else ""
    log(f"trained {steps} steps in {time.perf_counter() - started:.0f} s: mean loss {first:.3f} (first tenth) -> "
        f"{last:.3f} (last tenth); {where or result.adapter_path}")  # fmt: skip

    stack = AdapterStack(pipe)
    stack.load(TOKEN, result.adapter_path)
    stack.load("toy-style", toy.STYLE_ADAPTER)
    columns = [("base", {}), (TOKEN, {TOKEN: 1.0})]
    columns += [(f"{TOKEN} + toy-style @ {s:g}", {TOKEN: 1.0, "toy-style": s}) for s in STYLE_SCALES]
    rows, token_images, plain_images = [], {"base": [], TOKEN: []}, {"base": [], TOKEN: []}
    for prompt in (TOKEN_PROMPT, PLAIN_PROMPT):
        for s in range(seeds):
            row = []
            for label, active in columns:
                with stack.activated(active):
                    g = torch.Generator().manual_seed(seed * 1000 + s)
                    image = pipe(prompt, num_inference_steps=20, generator=g, height=toy.SIZE, width=toy.SIZE,
                                 **guidance_kwargs(pipe)).images[0]  # fmt: skip
                row.append(image)
                if label in token_images:
                    (token_images if prompt == TOKEN_PROMPT else plain_images)[label].append(image)
            rows.append(row)
    row_labels = [f"{prompt}, seed {seed * 1000 + s}" for prompt in (TOKEN_PROMPT, PLAIN_PROMPT) for s in range(seeds)]
    guidance = pipe_settings(pipe).guidance
    caption = f"{steps} training steps  |  20 sampling steps, guidance {guidance:g}"
    grid = labelled_grid(rows, [label for label, _ in columns], row_labels, caption)
    grid_path = out / "demo-grid.png"
    grid.save(grid_path)
    stack.detach()
    scores, evaluated = toy_scores(token_images, plain_images, data, seed, seeds)
    means = {(r.adapter, r.metric): r.mean for r in scores.rows}
    return DemoResult(
        grid_path, result.adapter_path, registered,
        means.get((None, "fidelity"), 0.0), means.get((TOKEN, "fidelity"), 0.0),
        time.perf_counter() - started,
        means.get((None, "prompt"), 0.0), means.get((TOKEN, "prompt"), 0.0),
        reused, first, last, scores, evaluated,
    )  # fmt: skip


def toy_scores(token_images: dict, plain_images: dict, data: Path, seed: int, seeds: int):
    """The ``toy`` evaluator on the grid's base and adapter images (the same seeds), against the training stars."""
    from PIL import Image

    from lorastack.core.evaluation import EvalImage
    from lorastack.core.evaluation_run import evaluate_images, resolve_evaluators

    images = []
    for prompt, drawn, subject in ((TOKEN_PROMPT, token_images, True), (PLAIN_PROMPT, plain_images, False)):
        for s in range(seeds):
            base = drawn["base"][s]
            images.append(EvalImage(base, prompt, seed * 1000 + s, 0.0, None, subject, base))
            images.append(EvalImage(drawn[TOKEN][s], prompt, seed * 1000 + s, 1.0, TOKEN, subject, base))
    instance = [Image.open(p).convert("RGB") for p in sorted(data.glob("*.png"))]
    return evaluate_images(resolve_evaluators(["toy"]), images, instance), images


def loss_means(losses: list[float]) -> tuple[float, float]:
    """Mean loss of the first and of the last tenth of the steps (at least one step each): one noisy step says
    little, and a run of any length has tenths."""
    if not losses:
        return 0.0, 0.0
    k = max(1, len(losses) // 10)
    return sum(losses[:k]) / k, sum(losses[-k:]) / k


def register(adapter: Path, name: str, data: Path) -> tuple[str, bool]:
    """``adapter`` as a version of ``name``: the newest version with the same tensors when there is one (a rerun
    of the demo), else a new one. Returns the version's reference and whether it was reused."""
    from lorastack.adapters.files import file_and_tensor_sha256
    from lorastack.registry import Registry
    from lorastack.registry.names import parse_name_tag

    registry = Registry()
    bare, tag = parse_name_tag(name)
    tensors = file_and_tensor_sha256(adapter)[1]
    for version in reversed(registry.versions(bare)):
        if version.adapter_file.tensor_sha256 == tensors:
            return version.ref, True
    imported = registry.import_file(
        adapter, bare, tag, trigger_words=[TOKEN], base_model="toy",
        provenance={"training": {"trainer": "dreambooth", "base": "toy", "data": str(data), "demo": True}},
    )  # fmt: skip
    return imported.version.ref, False
