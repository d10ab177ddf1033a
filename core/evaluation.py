"""Evaluators: what scores generated images, and how the host turns their scores into a table and a weight.

An evaluator (a plugin object, registered through ``register_evaluators``) gets images with their prompts, seeds and
adapter weights, optionally the instance (training) images and the base's image for the same prompt and seed, and
returns named scalar scores per image. It declares each metric's direction (higher or lower is better); the host
never needs to know more about what a score means. The host groups the scores by adapter and weight (mean, spread,
count), picks the recommended weight (:func:`recommend_weight`) and the best checkpoint (:func:`best_step`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .errors import LorastackError
from .interfaces import Option

#: most weights one evaluation scores (each is a full set of images per adapter)
MAX_WEIGHTS = 64
#: adapter weights an evaluation accepts: the stack's range
MAX_WEIGHT = 10.0
METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class EvaluationError(LorastackError):
    """An evaluation cannot run: bad weights, prompts or metric names, a missing model, an evaluator's bad score."""


@dataclass(frozen=True)
class Metric:
    """One score an evaluator gives: ``name`` (lower-case, ``_``), its direction and a line for people."""

    name: str
    higher_is_better: bool = True
    description: str = ""


@dataclass
class EvalImage:
    """One generated image and how it was made.

    :param image: the image (PIL, RGB)
    :param prompt: the prompt it was generated from
    :param seed: its seed
    :param weight: the adapter's weight (0: the base)
    :param adapter: the adapter's reference (``me/star@2``), ``None`` for the base
    :param subject: whether the prompt names the adapter's subject (its trigger words or token): fidelity to the
        instance images is measured on these; the others are prompts the adapter should leave alone
    :param base_image: the base's image for the same prompt and seed (the image itself at weight 0), or ``None``
    """

    image: Any
    prompt: str
    seed: int
    weight: float
    adapter: str | None = None
    subject: bool = True
    base_image: Any = None


@dataclass
class EvalRequest:
    """What an evaluator gets: the images, the instance images (may be empty), the device to compute on (``cuda``,
    ``cpu``: the host's choice), and how many images to put through a model at once."""

    images: Sequence[EvalImage]
    instance_images: Sequence[Any] = ()
    device: str = "cpu"
    batch_size: int = 16


@runtime_checkable
class Evaluator(Protocol):
    """Scores generated images: CLIP similarity, DINO similarity, leakage against the base, …

    A score of ``None`` (or a metric left out of an image's scores) means the metric does not apply to that image
    (CLIP-I without instance images, leakage on a subject prompt); the host counts only the scores given.
    """

    name: str
    """What users type (``lorastack eval --evaluator NAME``)."""
    description: str
    """One line for ``lorastack plugins``."""
    options: Sequence[Option]
    """The options ``score`` accepts (a model folder, a batch size), checked before any image is generated."""
    metrics: Sequence[Metric]
    """The metrics it gives, each with its direction."""

    def score(self, request: EvalRequest, options: Mapping[str, Any]) -> Sequence[Mapping[str, float | None]]:
        """One mapping metric name → score per image of ``request.images``, in the same order. Load models here
        (once per process: cache them), batch the images, compute on ``request.device``. A model that cannot be
        loaded raises a ``LorastackError`` whose one line names the option that chooses it."""
        ...


@dataclass
class ScoreRow:
    """The aggregate of one metric for one adapter at one weight (``adapter`` ``None``: the base)."""

    adapter: str | None
    weight: float
    evaluator: str
    metric: str
    higher_is_better: bool
    mean: float
    std: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "adapter": self.adapter, "weight": self.weight, "evaluator": self.evaluator, "metric": self.metric,
            "higher_is_better": self.higher_is_better, "mean": self.mean, "std": self.std, "n": self.n,
        }  # fmt: skip

    @property
    def key(self) -> str:
        return f"{self.evaluator}.{self.metric}"


@dataclass
class Scores:
    """Rows of one evaluation, and the weight recommended per adapter."""

    rows: list[ScoreRow] = field(default_factory=list)
    recommended: dict[str, float | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"results": [r.as_dict() for r in self.rows], "recommended": dict(self.recommended)}


def parse_weights(text: str) -> list[float]:
    """``"0,0.5,1"`` or ``"0:1.5:0.25"`` (start:stop:step, stop included) → sorted weights, 0 always included."""
    text = str(text).strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3 or parts[2] <= 0:
                raise ValueError
            start, stop, step = parts
            count = math.floor((stop - start) / step + 1e-9) + 1
            if count > MAX_WEIGHTS:
                raise EvaluationError(f"--weights {text!r} makes {count} weights; the most is {MAX_WEIGHTS}")
            values = [round(start + i * step, 6) for i in range(max(count, 0))]
        else:
            values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise EvaluationError(
            f"--weights {text[:40]!r} is not a list of numbers (0,0.5,1) or a range START:STOP:STEP (0:1.5:0.25)"
        ) from None
    if not values or not all(math.isfinite(v) and abs(v) <= MAX_WEIGHT for v in values):
        raise EvaluationError(
            f"--weights {text[:40]!r}: each weight must be a number in -{MAX_WEIGHT:g}…{MAX_WEIGHT:g}"
        )
    values = sorted({0.0, *values})
    if len(values) > MAX_WEIGHTS:
        raise EvaluationError(f"--weights {text[:40]!r} has {len(values)} weights; the most is {MAX_WEIGHTS}")
    return values


def score_images(
    evaluators: Sequence[tuple[Any, Mapping[str, Any]]],
    images: Sequence[EvalImage],
    instance_images: Sequence[Any] = (),
    *,
    device: str = "cpu",
    batch_size: int = 16,
) -> list[ScoreRow]:
    """Every evaluator (with its resolved options) on ``images``, aggregated per adapter and weight.

    Each evaluator's answer is checked: one mapping per image, known metric names, finite numbers; anything else
    is a ``PluginError``-like :class:`EvaluationError` naming the evaluator.
    """
    request = EvalRequest(list(images), list(instance_images), device, batch_size)
    rows: list[ScoreRow] = []
    for evaluator, options in evaluators:
        metrics = {m.name: m for m in evaluator.metrics}
        answer = list(evaluator.score(request, options))
        if len(answer) != len(images):
            raise EvaluationError(
                f"evaluator {evaluator.name!r} returned {len(answer)} scores for {len(images)} images"
            )
        groups: dict[tuple[str | None, float, str], list[float]] = {}
        for image, scores in zip(images, answer):
            for metric, value in dict(scores).items():
                if metric not in metrics:
                    raise EvaluationError(
                        f"evaluator {evaluator.name!r} returned a score for {metric!r}, which is not one of its "
                        f"metrics: {', '.join(metrics)}"
                    )
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise EvaluationError(f"evaluator {evaluator.name!r}: {metric} score {value!r} is not a number")
                groups.setdefault((image.adapter, float(image.weight), metric), []).append(float(value))
        for (adapter, weight, metric), values in groups.items():
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            m = metrics[metric]
            rows.append(ScoreRow(adapter, weight, evaluator.name, metric, m.higher_is_better, mean, std, len(values)))
    rows.sort(key=lambda r: (r.adapter is not None, r.adapter or "", r.weight, r.evaluator, r.metric))
    return rows


def recommend_weight(rows: Sequence[ScoreRow], adapter: str) -> float | None:
    """The weight with the best trade-off between what the adapter should change and what it should not.

    The rule, which needs only each metric's direction: for each metric of ``adapter`` (the base's rows are its
    weight 0), the means over the weights are rescaled to 0 (worst) … 1 (best); a metric whose range over the
    weights is within its standard error (std/√n, the largest of its weights) is noise and left out. Each weight's
    trade-off is the mean of its rescaled scores; the best non-zero weight wins, the smaller one on a tie. With
    fidelity metrics that rise with the weight and leakage metrics that rise too (and are lower-is-better), this is
    the weight past which more leakage costs more than more fidelity gains. ``None`` when no metric varies.
    """
    mine = [r for r in rows if r.adapter == adapter or (r.adapter is None and r.weight == 0)]
    weights = sorted({r.weight for r in mine if r.adapter == adapter and r.weight != 0})
    if not weights:
        return None
    by_metric: dict[str, dict[float, ScoreRow]] = {}
    for r in mine:
        by_metric.setdefault(r.key, {})[r.weight] = r
    totals = {w: [] for w in weights}
    for curve in by_metric.values():
        means = [r.mean for r in curve.values()]
        low, high = min(means), max(means)
        noise = max(r.std / math.sqrt(r.n) for r in curve.values())
        if high - low <= noise or high == low:
            continue
        for w in weights:
            if w not in curve:
                continue
            value = (curve[w].mean - low) / (high - low)
            totals[w].append(value if curve[w].higher_is_better else 1 - value)
    scored = {w: sum(v) / len(v) for w, v in totals.items() if v}
    if not scored:
        return None
    return max(scored, key=lambda w: (round(scored[w], 9), -abs(w)))


def recommend(rows: Sequence[ScoreRow]) -> dict[str, float | None]:
    """:func:`recommend_weight` for every adapter in ``rows``."""
    adapters = sorted({r.adapter for r in rows if r.adapter is not None})
    return {a: recommend_weight(rows, a) for a in adapters}


def find_metric(rows: Sequence[ScoreRow], name: str) -> list[ScoreRow]:
    """The rows of metric ``name`` (``clip_t`` or ``clip.clip_t``); an error listing the metrics when none."""
    found = [r for r in rows if name in (r.metric, r.key)]
    if not found:
        known = ", ".join(sorted({r.key for r in rows})) or "none"
        raise EvaluationError(f"--eval-metric {name!r} is not a metric of the evaluators; their metrics: {known}")
    return found


def best_step(history: Mapping[int, Sequence[ScoreRow]], metric: str) -> int | None:
    """The step whose scores are best on ``metric`` (at weight 1, or the largest weight scored), the earlier one on
    a tie; ``None`` without history."""
    best: tuple[float, int] | None = None
    for step, rows in sorted(history.items()):
        found = [r for r in find_metric(rows, metric) if r.adapter is not None] or find_metric(rows, metric)
        row = max(found, key=lambda r: (r.weight == 1.0, r.weight))
        value = row.mean if row.higher_is_better else -row.mean
        if best is None or value > best[0] + 1e-12:
            best = (value, step)
    return None if best is None else best[1]


def table_lines(rows: Sequence[ScoreRow], recommended: Mapping[str, float | None] | None = None) -> list[str]:
    """The rows as a text table for people: one line per adapter and weight, one column per metric."""
    metrics = sorted({r.key: r.higher_is_better for r in rows}.items())
    cells: dict[tuple[str | None, float], dict[str, ScoreRow]] = {}
    for r in rows:
        cells.setdefault((r.adapter, r.weight), {})[r.key] = r
    header = ["ADAPTER", "WEIGHT"] + [f"{k} {'↑' if up else '↓'}" for k, up in metrics]
    table = [header]
    for (adapter, weight), found in sorted(cells.items(), key=lambda kv: (kv[0][0] is not None, kv[0][0] or "",
                                                                           kv[0][1])):  # fmt: skip
        line = [adapter or "base", f"{weight:g}"]
        for key, _ in metrics:
            r = found.get(key)
            line.append("" if r is None else f"{r.mean:.3f} ±{r.std:.3f} (n={r.n})")
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    for adapter, weight in (recommended or {}).items():
        lines.append(f"recommended weight for {adapter}: " + ("none (no metric varies)" if weight is None
                                                              else f"{weight:g}"))  # fmt: skip
    return lines


def check_metric_names(evaluator: Any) -> None:
    """An evaluator's metrics, checked when it registers (the host stores them by name)."""
    metrics = getattr(evaluator, "metrics", None)
    if not isinstance(metrics, Sequence) or not metrics or not all(isinstance(m, Metric) for m in metrics):
        raise EvaluationError(f"evaluator {evaluator.name!r}: metrics must be a non-empty sequence of Metric")
    names = [m.name for m in metrics]
    bad = [n for n in names if not isinstance(n, str) or not METRIC_NAME.match(n)]
    if bad or len(set(names)) != len(names):
        raise EvaluationError(
            f"evaluator {evaluator.name!r}: metric names must be unique, lower-case letters, digits and '_' "
            f"(got {', '.join(map(repr, bad or names))})"
        )


def split_prompts(text: str, limit: int = 200) -> list[str]:
    """``"a|b"`` → prompts (stripped, empty ones dropped), at most ``limit``, each at most 1,000 characters."""
    prompts = [p.strip() for p in str(text).split("|") if p.strip()]
    if not prompts:
        raise EvaluationError("--prompts holds no prompt; give 'a prompt|another' or a file with one per line")
    if len(prompts) > limit:
        raise EvaluationError(f"--prompts has {len(prompts)} prompts; the most is {limit}")
    for p in prompts:
        if len(p) > 1000:
            raise EvaluationError(f"a prompt of {len(p):,} characters is too long; the most is 1,000")
    return prompts


def is_subject_prompt(prompt: str, words: Iterable[str]) -> bool:
    """Whether ``prompt`` names one of ``words`` (an adapter's trigger words or token) as a whole word."""
    return any(re.search(rf"(?<![\w]){re.escape(w)}(?![\w])", prompt, re.I) for w in words if w.strip())
