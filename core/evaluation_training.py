"""``train --eval-every N --eval-metric NAME``: score the checkpoints of a run with evaluators, mark the best one.

Before the first step the base is scored (step 0: a LoRA starts at zero, so the untrained adapter draws exactly
what the base draws), then the adapter every N steps and at the end, on the same prompts and seeds. The scores go
into the run folder (``run.json``: ``evaluation``), the best checkpoint by the metric is marked there (as the
validation loss marks its own), and the registered version and its Hub model card get the final adapter's scores.

Under ``accelerate launch`` the main process alone draws and scores (it alone writes the run folder); the others
wait for it at the barrier the engine's checkpoints use. A resumed run keeps the step-0 scores of its ``run.json``
and reads the base's images back from ``evaluation/`` (leakage compares with them) instead of drawing them again.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Any

from .evaluation import (
    EvalImage,
    EvaluationError,
    ScoreRow,
    best_step,
    find_metric,
    is_subject_prompt,
    recommend,
    score_images,
)
from .evaluation_run import EvalPlan, draw, resolve_evaluators

MAX_EVAL_PROMPTS = 16
EVAL_OPTION_NAMES = ("eval_every", "eval_metric", "evaluators", "eval_prompts", "eval_seeds")
BASE_FOLDER = "evaluation"  # RUN/evaluation/base-NNN.png: the base's images, prompt by prompt, seed by seed
LABEL = "checkpoint"  # the adapter's name in a run's rows (the registered version's ref replaces it when stored)


def checkpoint_name(step: int) -> str:
    return "base" if step == 0 else f"step-{step:06d}"


def check_options(options) -> dict[str, Any]:
    """The run's evaluation settings, checked before any work; ``{}`` when ``--eval-every`` is 0.

    ``--eval-metric`` defaults to the evaluators' first metric, ``--evaluators`` to the metric's evaluator (or
    ``clip``). Checkpoints are kept where evaluations are: ``--eval-every`` must be a multiple of a given
    ``--checkpoint-every`` (``checkpoint_every`` follows ``eval_every`` when it is 0).
    """
    every = options.get("eval_every") or 0
    if not every:
        if options.get("eval_metric"):
            raise EvaluationError("--eval-metric needs --eval-every N (how often checkpoints are scored)")
        return {}
    metric = (options.get("eval_metric") or "").strip()
    names = [n.strip() for n in (options.get("evaluators") or "").split(",") if n.strip()]
    if not names:
        names = [metric.split(".")[0]] if "." in metric else ["clip"]
    evaluators = resolve_evaluators(names)
    metrics = [f"{e.name}.{m.name}" for e, _ in evaluators for m in e.metrics]
    if not metric:
        metric = metrics[0]
    elif not any(metric in (key, key.split(".", 1)[1]) for key in metrics):
        raise EvaluationError(f"--eval-metric {metric!r} is not a metric of {', '.join(names)}; their metrics: "
                              f"{', '.join(metrics)}")  # fmt: skip
    checkpoint_every = options.get("checkpoint_every") or 0
    if checkpoint_every and every % checkpoint_every:
        raise EvaluationError(f"--eval-every {every} is not a multiple of --checkpoint-every {checkpoint_every}: "
                              "the best checkpoint must be one that is kept")  # fmt: skip
    prompts = [p.strip() for p in (options.get("eval_prompts") or "").split("|") if p.strip()]
    if len(prompts) > MAX_EVAL_PROMPTS:
        raise EvaluationError(f"--eval-prompts has {len(prompts)} prompts; the most is {MAX_EVAL_PROMPTS}")
    return {"every": every, "metric": metric, "evaluators": evaluators, "prompts": prompts,
            "seeds": int(options.get("eval_seeds") or 2)}  # fmt: skip


@dataclass
class RunEvaluation:
    """The scores of one run's checkpoints, kept in its ``run.json``."""

    context: Any  # the TrainingContext
    settings: dict[str, Any]
    plan: EvalPlan
    subject_words: list[str]
    instance: list[Any]
    base_images: dict[tuple[str, int], Any] = field(default_factory=dict)
    history: dict[int, list[ScoreRow]] = field(default_factory=dict)
    process: Any = None  # accelerate's PartialState of the run: only its main process draws, scores and writes

    @property
    def state(self) -> dict[str, Any]:
        return self.context.run.state.setdefault("evaluation", {"metric": self.settings["metric"], "steps": {}})

    def _subject(self, prompt: str) -> bool:
        return is_subject_prompt(prompt, self.subject_words)

    def _draw(self) -> list[tuple[str, int, Any]]:
        from .training.conditioning import pipeline_kwargs

        pipe, extra = self.context.pipe, pipeline_kwargs(self.context.pipe, self.context.options.max_sequence_length)
        modules = [getattr(pipe, c) for c in ("unet", "transformer", "text_encoder", "text_encoder_2")
                   if getattr(pipe, c, None) is not None]  # fmt: skip
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        progress = pipe._progress_bar_config if hasattr(pipe, "_progress_bar_config") else None
        pipe.set_progress_bar_config(disable=True)
        try:
            out = []
            for prompt in self.plan.prompts:
                out += [(prompt, s, img) for s, img in zip(self.plan.seeds, draw(pipe, prompt, self.plan.seeds,
                                                                                   self.plan, extra))]  # fmt: skip
            return out
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)
            if progress is not None:
                pipe._progress_bar_config = progress

    def score(self, step: int, drawn: list[tuple[str, int, Any]] | None = None) -> list[ScoreRow]:
        """Draw (unless ``drawn`` is given) and score the pipeline as it is now (the base at step 0), record it,
        re-mark the best step."""
        drawn = self._draw() if drawn is None else drawn
        if step == 0:
            self.base_images = {(p, s): img for p, s, img in drawn}
        adapter, weight = (None, 0.0) if step == 0 else (LABEL, 1.0)
        images = [EvalImage(img, p, s, weight, adapter, self._subject(p), self.base_images.get((p, s)))
                  for p, s, img in drawn]  # fmt: skip
        if step == 0:
            self._keep_base(drawn)
        rows = score_images(
            self.settings["evaluators"], images, self.instance, device=str(self.context.options.device)
        )
        if step != 0:
            rows += [r for r in self.history.get(0, []) if r.adapter is None]  # the base at weight 0, for the curve
        self.history[step] = rows
        state = self.state
        state["steps"][str(step)] = [r.as_dict() for r in rows]
        best = best_step(self.history, self.settings["metric"])
        state["best"] = None if best is None else checkpoint_name(best)
        state["best_step"] = best
        state["best_value"] = self._value(best)
        self.context.run._write()
        return rows

    @property
    def main(self) -> bool:
        return self.process is None or self.process.is_main_process

    def _on_main(self, step: int) -> None:
        """Score ``step`` on the main process; every process leaves together (the others wait at the barrier).
        A sharded run's pipeline needs every process for each forward: all of them draw, the main one scores."""
        sharded = self.process is not None and self.process.num_processes > 1 and self.context.options.shard != "none"
        drawn = self._draw() if sharded else None
        if self.main:
            self.score(step, drawn)
        self._barrier()

    def _barrier(self) -> None:
        if self.process is not None and self.process.num_processes > 1:
            self.process.wait_for_everyone()  # accelerate's barrier, the one Accelerator.wait_for_everyone uses

    def on_step(self, done: int) -> None:
        if done % self.settings["every"] == 0 or done == self.context.options.steps:
            self._on_main(done)

    def _keep_base(self, drawn: list[tuple[str, int, Any]]) -> None:
        """The base's images as PNGs in ``RUN/evaluation/`` (written before ``run.json`` lists step 0), so a resumed
        run compares with the very same images."""
        from lorastack.adapters.outputs import atomic_write_bytes

        folder = self.context.run.path / BASE_FOLDER
        folder.mkdir(exist_ok=True)
        for k, (_, _, image) in enumerate(drawn):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")  # lossless: the toy's and the pipelines' images are 8-bit RGB
            atomic_write_bytes(folder / f"base-{k:03d}.png", buffer.getvalue())

    def _read_base(self) -> bool:
        """The base's images of an earlier part of this run, if they are all there."""
        from PIL import Image

        folder = self.context.run.path / BASE_FOLDER
        keys = [(p, s) for p in self.plan.prompts for s in self.plan.seeds]
        files = [folder / f"base-{k:03d}.png" for k in range(len(keys))]
        if not all(f.is_file() for f in files):
            return False
        try:
            images = [Image.open(f).convert("RGB") for f in files]
        except OSError:  # a damaged file: draw them again
            return False
        self.base_images = dict(zip(keys, images))
        return True

    def final_rows(self) -> list[ScoreRow]:
        return self.history.get(max(self.history), []) if self.history else []

    def _value(self, best: int | None) -> float | None:
        if best is None:
            return None
        rows = [r for r in find_metric(self.history[best], self.settings["metric"])
                if r.adapter == (None if best == 0 else LABEL)]  # fmt: skip
        return rows[0].mean if rows else None

    def summary(self) -> dict[str, Any]:
        # the main process scored; the others read its run.json (written before they left the last barrier)
        found = self.state if self.main else self.context.run.reload().get("evaluation", {})
        return {"metric": self.settings["metric"], "best": found.get("best"), "best_step": found.get("best_step"),
                "best_value": found.get("best_value")}  # fmt: skip

    def record(self, registry, ref: str) -> None:
        """The final adapter's scores (and the base's at weight 0) stored with the registered version ``ref``."""
        from lorastack.registry.scores import record_scores

        if not self.main:  # one process records (the others have no scores)
            return
        rows = [ScoreRow(ref if r.adapter else None, r.weight, r.evaluator, r.metric, r.higher_is_better, r.mean,
                         r.std, r.n) for r in self.final_rows()]  # fmt: skip
        protocol = {"run": str(self.context.run.path), "prompts": self.plan.prompts, "seeds": self.plan.seeds,
                    "steps": self.plan.steps, "evaluators": [e.name for e, _ in self.settings["evaluators"]],
                    **self.summary()}  # fmt: skip
        record_scores(registry, ref, rows, recommend(rows).get(ref), protocol, source="training")


def _fill(text: str, fill: dict[str, str]) -> str:
    for key, value in fill.items():
        text = text.replace("{" + key + "}", value)
    return " ".join(text.split())


def _default_prompts(context) -> tuple[list[str], list[str]]:
    """Prompts and subject words when the run names none: the instance prompt (or two of the training captions),
    and a class prompt (a caption of the class images) as one the adapter should leave alone."""
    from .data import open_dataset

    options = context.options
    token = (options.get("token") or "").strip()
    words = [token] if token else [w.strip() for w in (options.get("trigger") or "").split(",") if w.strip()]
    fill = {"token": token, "class_name": (options.get("class_name") or "").strip()}
    if options.get("instance_prompt") and not options.get("use_captions"):
        prompts = [_fill(options["instance_prompt"], fill)]
    else:
        prompts = list(dict.fromkeys(i.caption for i in context.dataset.items if i.caption))[:2]
    if not words:
        words = list(prompts)
    plain = None
    if options.get("class_data"):
        plain = next((i.caption for i in open_dataset(options["class_data"]).items if i.caption), None)
    elif fill["class_name"] and options.get("class_prompt"):
        plain = _fill(options["class_prompt"], fill)
    if plain and plain not in prompts:
        prompts.append(plain)
    return prompts, words


def start(context) -> RunEvaluation | None:
    """The run's evaluation (``None`` when ``--eval-every`` is 0), with the base scored at once (step 0); a resumed
    run keeps the scores its ``run.json`` holds."""
    settings = check_options(context.options)
    if not settings:
        return None
    prompts, words = _default_prompts(context)
    if settings["prompts"]:
        prompts = settings["prompts"]
    if not prompts:
        raise EvaluationError("--eval-every: no prompts to score; pass --eval-prompts 'a|b'")
    options = context.options
    plan = EvalPlan(prompts, list(range(options.seed, options.seed + settings["seeds"])), [0.0, 1.0],
                    options.sample_steps, None, options.resolution)  # fmt: skip
    evaluation = RunEvaluation(context, settings, plan, words, [i.image for i in context.dataset.items],
                               process=_process_state())  # fmt: skip
    drawn_with = {"prompts": prompts, "seeds": plan.seeds, "evaluators": [e.name for e, _ in settings["evaluators"]],
                  "sample_steps": plan.steps, "resolution": plan.size, "metric": settings["metric"]}  # fmt: skip
    state = evaluation.state
    if state.get("plan") == drawn_with:  # a resumed run with the same evaluation: its scores stand
        for step, rows in state.get("steps", {}).items():
            evaluation.history[int(step)] = [ScoreRow(**row) for row in rows]
    elif evaluation.main:
        state.update({"metric": settings["metric"], "steps": {}, "best": None, "best_step": None})
    state["plan"], state["prompts"] = drawn_with, prompts
    # step 0 scored before and the base's images read back: nothing to draw (every process passes the barrier once)
    if evaluation.main and (0 not in evaluation.history or not evaluation._read_base()):
        evaluation.score(0)
    evaluation._barrier()
    return evaluation


def _process_state():
    """accelerate's process state, which a run under ``accelerate launch``/``torchrun`` (they set ``WORLD_SIZE``)
    has joined before evaluation starts (``training.processes.process_state``); ``None`` for one process."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    from accelerate import PartialState

    return PartialState()
