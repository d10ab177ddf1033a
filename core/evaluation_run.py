"""``lorastack eval``: draw the base and each adapter at each weight on the same prompts and seeds, score the images
with the evaluators, and write the table, a plot per metric and the grids the scores came from.

Everything a user typed is checked before any model loads: evaluator names and options, weights, prompts, seeds,
the instance images, the output folder. Weight 0 is the base itself, drawn once per prompt and seed and shared by
every adapter.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .evaluation import (
    EvalImage,
    EvaluationError,
    Scores,
    is_subject_prompt,
    recommend,
    score_images,
    split_prompts,
)

DREAMBENCH_FILE = Path(__file__).parent / "data" / "dreambench.json"
MAX_SEEDS = 64
MAX_IMAGES = 20_000  # images one evaluation draws (prompts x seeds x (1 + adapters x weights))
MAX_INSTANCE_IMAGES = 256
MAX_PROMPT_FILE = 2**20


@dataclass
class EvalPlan:
    """What to draw: prompts, seeds, weights, and how (sampling steps, guidance, size)."""

    prompts: list[str]
    seeds: list[int]
    weights: list[float]
    steps: int = 25
    guidance: float | None = None
    size: int | None = None
    subject_words: list[str] = field(default_factory=list)  # the token/trigger words of subject prompts


@dataclass
class EvalReport:
    scores: Scores
    images: list[EvalImage]
    files: list[Path] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**self.scores.as_dict(), "files": [str(f) for f in self.files]}


def dreambench_prompts(token: str, class_noun: str, live: bool = False) -> list[str]:
    """The DreamBench prompt templates (object or live subject) with the token and class noun filled in."""
    data = json.loads(DREAMBENCH_FILE.read_text())
    return [t.format(token=token, **{"class": class_noun}) for t in data["live" if live else "object"]]


def load_prompts(value: str) -> list[str]:
    """``--prompts``: a file with one prompt per line (bounded), or prompts separated by ``|``."""
    path = Path(value).expanduser()
    if "|" not in value and path.is_file():
        with path.open("rb") as f:
            raw = f.read(MAX_PROMPT_FILE + 1)
        if len(raw) > MAX_PROMPT_FILE:
            raise EvaluationError(f"--prompts file {str(path)!r} is over {MAX_PROMPT_FILE // 2**20} MiB")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise EvaluationError(f"--prompts file {str(path)!r} is not UTF-8 text") from None
        return split_prompts("|".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return split_prompts(value)


def parse_evaluator_options(pairs: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, str]]:
    """``["clip.model=DIR", "dino.batch-size=4"]`` → options per evaluator; each must name a chosen evaluator."""
    out: dict[str, dict[str, str]] = {n: {} for n in names}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        evaluator, dot, option = key.strip().partition(".")
        if not sep or not dot or not option:
            raise EvaluationError(f"--option {pair[:60]!r} is not EVALUATOR.KEY=VALUE (clip.model=DIR)")
        if evaluator not in out:
            raise EvaluationError(f"--option {pair[:60]!r} names evaluator {evaluator!r}, which is not chosen; "
                                  f"chosen: {', '.join(names)}")  # fmt: skip
        out[evaluator][option] = value
    return out


def resolve_evaluators(names: Sequence[str], given: Mapping[str, Mapping[str, Any]] | None = None):
    """``[(evaluator, resolved options)]`` for the names (unknown names and bad options are errors, at once)."""
    from lorastack.plugins.manager import get_evaluator

    from .interfaces import resolve_options

    if not names:
        raise EvaluationError("no evaluator chosen; pass --evaluator NAME (lorastack plugins lists them)")
    chosen = []
    for name in dict.fromkeys(names):
        evaluator = get_evaluator(name)
        chosen.append((evaluator, resolve_options(evaluator.options, dict((given or {}).get(name, {})),
                                                  f"evaluator {name!r}")))  # fmt: skip
    return chosen


def instance_images(location: str | Path) -> list[Any]:
    """The images of ``--instance-data`` (any dataset source), at most :data:`MAX_INSTANCE_IMAGES`."""
    from .data import open_dataset

    dataset = open_dataset(location)
    if len(dataset.items) > MAX_INSTANCE_IMAGES:
        raise EvaluationError(f"--instance-data {str(location)!r} has {len(dataset.items)} images; the most is "
                              f"{MAX_INSTANCE_IMAGES}")  # fmt: skip
    return [item.image for item in dataset.items]


def check_plan(plan: EvalPlan, adapters: int) -> None:
    if not 1 <= len(plan.seeds) <= MAX_SEEDS:
        raise EvaluationError(f"--seeds {len(plan.seeds)}: give 1–{MAX_SEEDS} seeds")
    count = len(plan.prompts) * len(plan.seeds) * (1 + adapters * sum(1 for w in plan.weights if w != 0))
    if count > MAX_IMAGES:
        raise EvaluationError(f"this evaluation would draw {count:,} images, over the {MAX_IMAGES:,} limit; use fewer "
                              "prompts, seeds or weights")  # fmt: skip


def draw(pipe, prompt: str, seeds: Sequence[int], plan: EvalPlan, extra: Mapping[str, Any] | None = None) -> list:
    """One image per seed for ``prompt`` with the pipeline as it is now (adapters applied or not), in one batch."""
    import torch

    from .base_settings import pipe_settings

    settings = pipe_settings(pipe)
    size = plan.size or settings.resolution
    guidance = plan.guidance if plan.guidance is not None else settings.guidance
    return pipe([prompt] * len(seeds), num_inference_steps=plan.steps, height=size, width=size,
                guidance_scale=guidance, generator=[torch.Generator().manual_seed(s) for s in seeds],
                **dict(extra or {})).images  # fmt: skip


def render(
    pipe,
    activate: Callable[[str | None, float], Any],
    adapters: Sequence[str],
    plan: EvalPlan,
    subject_words: Mapping[str, Sequence[str]] | None = None,
    extra: Mapping[str, Any] | None = None,
    on_image: Callable[[int], None] | None = None,
) -> list[EvalImage]:
    """The base (``adapter`` ``None``, weight 0) and every adapter at every non-zero weight, on every prompt and
    seed. ``activate(adapter, weight)`` is a context manager that puts that adapter at that weight into ``pipe``."""
    out: list[EvalImage] = []
    words = {a: list(plan.subject_words) + list((subject_words or {}).get(a, ())) for a in adapters}
    every = sorted({w for ws in words.values() for w in ws} | set(plan.subject_words))
    for prompt in plan.prompts:
        with activate(None, 0.0):
            base = draw(pipe, prompt, plan.seeds, plan, extra)
        subject = is_subject_prompt(prompt, every)
        out += [EvalImage(img, prompt, s, 0.0, None, subject, img) for img, s in zip(base, plan.seeds)]
        if on_image:
            on_image(len(base))
        for adapter in adapters:
            mine = is_subject_prompt(prompt, words[adapter])
            for weight in plan.weights:
                if weight == 0:
                    continue
                with activate(adapter, weight):
                    images = draw(pipe, prompt, plan.seeds, plan, extra)
                out += [EvalImage(img, prompt, s, weight, adapter, mine, b)
                        for img, s, b in zip(images, plan.seeds, base)]  # fmt: skip
                if on_image:
                    on_image(len(images))
    return out


def evaluate_images(evaluators, images: Sequence[EvalImage], instance: Sequence[Any] = (), *,
                    device: str = "cpu") -> Scores:  # fmt: skip
    """Scores of ``images`` by every evaluator, with the recommended weight of each adapter."""
    rows = score_images(evaluators, images, instance, device=device)
    return Scores(rows, recommend(rows))


# --- outputs ----------------------------------------------------------------------------------------------------


def plot_png(rows, metric: str, title: str = "") -> bytes:
    """One metric's mean (± std) against the adapter weight, a line per adapter (the base is each one's weight 0)."""
    from matplotlib.figure import Figure

    mine = [r for r in rows if r.key == metric]
    figure = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    axes = figure.subplots()
    base = [r for r in mine if r.adapter is None]
    for adapter in sorted({r.adapter for r in mine if r.adapter is not None}):
        points = sorted([(r.weight, r.mean, r.std) for r in mine if r.adapter == adapter] +
                        [(0.0, r.mean, r.std) for r in base])  # fmt: skip
        weights, means, stds = zip(*points)
        axes.errorbar(weights, means, yerr=stds, marker="o", capsize=3, label=adapter)
    if base and not any(r.adapter for r in mine):
        axes.errorbar([0.0], [base[0].mean], yerr=[base[0].std], marker="o", capsize=3, label="base")
    up = mine[0].higher_is_better if mine else True
    axes.set_xlabel("adapter weight (0 = the base)")
    axes.set_ylabel(f"{metric} ({'higher' if up else 'lower'} is better)")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best")
    axes.set_title(title or f"{metric} against the adapter weight")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def grid_images(images: Sequence[EvalImage]) -> list[tuple[str, Any]]:
    """One labelled grid per prompt: a row per seed, a column for the base and for each adapter at each weight."""
    from .grids import labelled_grid

    out = []
    for index, prompt in enumerate(dict.fromkeys(i.prompt for i in images)):
        mine = [i for i in images if i.prompt == prompt]
        columns = list(dict.fromkeys((i.adapter, i.weight) for i in mine))
        seeds = list(dict.fromkeys(i.seed for i in mine))
        cell = {(i.adapter, i.weight, i.seed): i.image for i in mine}
        rows = [[cell[(a, w, s)] for a, w in columns] for s in seeds]
        labels = ["base" if a is None else f"{a} @ {w:g}" for a, w in columns]
        grid = labelled_grid(rows, labels, [f"seed {s}" for s in seeds], prompt)
        out.append((f"grid-{index:02d}.png", grid))
    return out


def write_outputs(output: str | Path, report: EvalReport) -> list[Path]:
    """``scores.json``, ``scores.txt``, ``plot-EVALUATOR.METRIC.png`` per metric and ``grid-NN.png`` per prompt,
    each written atomically into ``output``."""
    from lorastack.adapters.outputs import atomic_write_bytes

    from .evaluation import table_lines

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    files = []
    rows = report.scores.rows
    for key in sorted({r.key for r in rows}):
        path = output / f"plot-{key}.png"
        atomic_write_bytes(path, plot_png(rows, key))
        files.append(path)
    for name, grid in grid_images(report.images):
        buffer = io.BytesIO()
        grid.save(buffer, format="PNG")
        atomic_write_bytes(output / name, buffer.getvalue())
        files.append(output / name)
    text = "\n".join(table_lines(rows, report.scores.recommended)) + "\n"
    atomic_write_bytes(output / "scores.txt", text.encode())
    # written last: a folder with scores.json holds everything it lists
    report.files = [*files, output / "scores.txt", output / "scores.json"]
    atomic_write_bytes(output / "scores.json", json.dumps(report.as_dict(), indent=2).encode())
    return report.files


def run_evaluation(
    refs: Sequence[str],
    base: str,
    plan: EvalPlan,
    evaluator_names: Sequence[str],
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    instance_data: str | Path | None = None,
    output: str | Path | None = None,
    device: str | None = None,
    record: bool = True,
    progress: Callable[[int], None] | None = None,
) -> EvalReport:
    """``lorastack eval``: every check first, then the base, the images, the scores, the files and (for registry
    versions, with ``record``) the scores stored with each version (:mod:`lorastack.registry.scores`)."""
    from lorastack.adapters.outputs import check_output_dir
    from lorastack.paths import data_home

    from .base import load_base
    from .devices import best_device
    from .sources import find_adapter
    from .stack import AdapterStack

    data_home()
    evaluators = resolve_evaluators(evaluator_names, options)
    check_plan(plan, len(refs))
    if output is not None:
        check_output_dir(Path(output))
    found = {ref: find_adapter(ref) for ref in dict.fromkeys(refs)}
    instance = instance_images(instance_data) if instance_data is not None else []
    device = device or best_device()
    pipe = load_base(base, device=device)
    pipe.set_progress_bar_config(disable=True)
    stack = AdapterStack(pipe)
    names: dict[str, str] = {}  # label (name@N for a registry version, the path given otherwise) → stack name
    for i, adapter in enumerate(found.values()):
        names[adapter.label] = f"adapter{i}"
        stack.load(f"adapter{i}", adapter.path, label=adapter.label, trigger_words=adapter.trigger_words)

    def activate(adapter: str | None, weight: float):
        return stack.activated({} if adapter is None else {names[adapter]: weight})

    words = {label: stack.get(name).trigger_words for label, name in names.items()}
    images = render(pipe, activate, list(names), plan, words, on_image=progress)
    stack.detach()
    scores = evaluate_images(evaluators, images, instance, device=device)
    report = EvalReport(scores, images)
    if output is not None:
        write_outputs(output, report)
    if record:
        from lorastack.registry import Registry
        from lorastack.registry.scores import record_scores

        registry = Registry()
        protocol = {"base": str(base), "prompts": plan.prompts, "seeds": plan.seeds, "steps": plan.steps,
                    "evaluators": [e.name for e, _ in evaluators]}  # fmt: skip
        for label in names:
            if "@" in label and not Path(label).exists():  # a registry version (name@N), not a file
                record_scores(registry, label, [r for r in scores.rows if r.adapter in (label, None)],
                              scores.recommended.get(label), protocol, source="eval")  # fmt: skip
    return report
