"""``lorastack merge``: several adapters into one, with the error of the result measured per layer.

Methods (every input's ΔW is its exact canonical ΔW, LyCORIS and DoRA included; ``wᵢ`` is the input's weight for
the layer, block weights applied):

* ``concat`` — exact. Plain LoRAs are stacked (``down = [D₁; D₂; …]``, ``up = [w₁s₁U₁ | w₂s₂U₂ | …]``, ranks add
  up); a layer where some input is not a plain LoRA (LoHa, LoKr, Tucker, DoRA, a fused slice) is written as a
  full difference Σ wᵢ ΔWᵢ. The measured error is float rounding.
* ``svd`` — the summed ΔW re-factored to rank R by its truncated SVD: the best rank-R approximation there is
  (Eckart–Young), error √Σ discarded σ².
* ``ties``, ``dare``, ``dare_ties``, ``magnitude_prune`` — peft's merge utilities (``peft.utils.merge_utils``) on
  the inputs' full ΔW, as the published methods define them on task vectors, then the truncated SVD to rank R
  (peft's ``*_svd`` combinations). The reported error is against the method's own merged ΔW; the distance to the
  plain weighted sum is reported too (that is what the method changes on purpose).

Without ``--rank`` a re-factored layer keeps the largest rank of its inputs (peft's default for ``svd``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .arith import (
    ArithmeticInputError,
    LayerReport,
    Source,
    block_counts_of,
    check_rank,
    common_family,
    dense,
    factors,
    layer_shape,
    lora_from_spectrum,
    measured_error,
    plain,
    spectrum_of,
    spectrum_stats,
    svd_dense,
)
from .arith_result import Result

METHODS = ("concat", "svd", "ties", "dare", "dare_ties", "magnitude_prune")
_PEFT = {"ties": "ties", "dare": "dare_linear", "dare_ties": "dare_ties", "magnitude_prune": "magnitude_prune"}


def contributions(sources: list[Source], family: str) -> dict[str, list[tuple[float, Any]]]:
    """Module name → ``[(weight, layer), …]`` over the inputs, block weights applied, zero weights left out."""
    from .scales import compile_scale

    counts = block_counts_of(sources, family)
    out: dict[str, list[tuple[float, Any]]] = {}
    for source in sources:
        scale_of = compile_scale(source.scale, family if family != "unknown" else "sd1", counts)
        for name, layer in source.adapter.layers.items():
            w = scale_of(name)
            if w != 0.0:
                out.setdefault(name, []).append((w, layer))
    return dict(sorted(out.items()))


def merge(
    sources: list[Source],
    method: str = "concat",
    *,
    rank: int | None = None,
    density: float | None = None,
    base_weights: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
) -> Result:
    """Merge ``sources`` (their scales are the weights) into one adapter; see the module docstring."""
    if method not in METHODS:
        raise ArithmeticInputError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    check_rank(rank)
    if method == "concat" and rank is not None:
        raise ArithmeticInputError("--rank re-factors the merge; --method concat is exact (ranks add up): use svd")
    if method in _PEFT:
        if density is None or not (0 < density <= 1):
            raise ArithmeticInputError(f"--method {method} needs --density from 0 (exclusive) to 1, e.g. 0.5")
    elif density is not None:
        raise ArithmeticInputError(f"--density is for ties, dare, dare_ties and magnitude_prune, not {method}")
    family = common_family(sources)
    base_weights = base_weights or {}
    per_module = contributions(sources, family)
    if base_weights:
        missing = [m for m in per_module if m not in base_weights]
        if missing:
            raise ArithmeticInputError(f"{len(missing)} input layers are not modules of the base (e.g. {missing[0]})")
    layers, reports = {}, []
    generator = torch.Generator().manual_seed(seed)
    for name, terms in per_module.items():
        weight = base_weights.get(name)
        layer, report = _merge_layer(name, terms, method, rank, density, weight, generator, family)
        layers[name] = layer
        reports.append(report)
    settings = {"method": method, "rank": rank, "density": density}
    if method in ("dare", "dare_ties"):
        settings["seed"] = seed
    result = Result(method, family, layers, reports, [s.record() for s in sources], settings)
    bias = bias_left_out(sources, result)
    if bias is not None:
        result.left_out["bias"] = bias
    return result


def _merge_layer(name, terms, method, rank, density, weight, generator, family="unknown"):
    shape = layer_shape(terms[0][1], weight)
    everything_plain = all(plain(layer) for _, layer in terms)
    if method == "concat":
        return _concat(name, terms, shape, weight, everything_plain, family)
    target_rank = rank or max((layer.rank or 1) for _, layer in terms)
    if method == "svd":
        if everything_plain:
            ups, downs = zip(*(factors(layer, w) for w, layer in terms))
            spec = spectrum_of(list(ups), list(downs), None)
        else:
            target = _weighted_sum(terms, weight)
            spec = svd_dense(target)
        target = None
    else:
        target = _peft_merge(method, terms, weight, density, generator)
        spec = svd_dense(target)
    k = min(target_rank, len(spec.S))
    result = lora_from_spectrum(spec, k, shape)
    if target is None:
        target = _weighted_sum(terms, weight)
    report = LayerReport(
        name, k, float(torch.linalg.matrix_norm(target)), measured_error(result, target), **spectrum_stats(spec.S, k)
    )
    if method in _PEFT:
        report.kind = f"lora ({method})"
    return result, report


def _weighted_sum(terms, weight) -> torch.Tensor:
    total = None
    for w, layer in terms:
        d = dense(layer, weight) * w
        total = d if total is None else total.add_(d)
    return total


def _concat(name, terms, shape, weight, everything_plain, family="unknown"):
    from lorastack.adapters import FullLayer, LoRALayer

    from .arith import exact_lora, lora_only_module

    target = _weighted_sum(terms, weight)
    result = None
    if everything_plain:
        ups, downs = zip(*(factors(layer, w) for w, layer in terms))
        rank = sum(d.shape[0] for d in downs)
        if rank <= min(target.shape):
            result = LoRALayer(_shaped_down(torch.cat(downs, 0), shape), _shaped_up(torch.cat(ups, 1), shape),
                               alpha=float(rank))  # fmt: skip
        # else more rank than the layer has: the exact sum is smaller as a full difference, and still exact
    if result is None:
        bias = _bias_sum(terms)
        if lora_only_module(family, name, shape) and bias is None:
            result = exact_lora(target)
        else:
            result = FullLayer(target.reshape(shape).contiguous(), diff_b=bias)
    kind = "lora" if isinstance(result, LoRALayer) else "full"
    report = LayerReport(
        name,
        result.rank if kind == "lora" else None,
        float(torch.linalg.matrix_norm(target)),
        measured_error(result, target),
        kind=kind,
    )
    return result, report


def _shaped_down(down: torch.Tensor, shape) -> torch.Tensor:
    return down.reshape(down.shape[0], *shape[1:]).contiguous() if len(shape) == 4 else down.contiguous()


def _shaped_up(up: torch.Tensor, shape) -> torch.Tensor:
    return up.reshape(*up.shape, 1, 1).contiguous() if len(shape) == 4 else up.contiguous()


def _bias_sum(terms) -> torch.Tensor | None:
    """Σ wᵢ Δbᵢ over the inputs that carry a bias difference (LyCORIS/ComfyUI ``diff_b``); ``None`` when none does."""
    total = None
    for w, layer in terms:
        b = layer.bias_delta()
        if b is not None:
            total = b * w if total is None else total + b * w
    return total


def bias_left_out(sources: list[Source], result: Result) -> dict[str, Any] | None:
    """The bias differences of the inputs that a re-factored result (a LoRA: no bias) does not carry."""
    names = [n for n, layer in result.layers.items() if layer.bias_delta() is None]
    per_module = contributions(sources, result.family)
    norms = {}
    for n in names:
        b = _bias_sum(per_module.get(n, []))
        if b is not None:
            norms[n] = float(b.norm())
    if not norms:
        return None
    worst = max(norms, key=norms.get)
    return {"layers": len(norms), "norm": math.sqrt(sum(v * v for v in norms.values())), "largest": worst,
            "largest_norm": norms[worst]}  # fmt: skip


def _peft_merge(method, terms, weight, density, generator) -> torch.Tensor:
    from peft.utils import merge_utils

    tasks = [dense(layer, weight) for _, layer in terms]
    weights = torch.tensor([w for w, _ in terms], dtype=torch.float32)
    function = getattr(merge_utils, _PEFT[method])
    if method in ("dare", "dare_ties"):
        # peft draws DARE's masks from torch's global generator: fork it so a --seed gives the same file every time
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            return function(tasks, weights, density)
    return function(tasks, weights, density)


def distance_to_sum(sources: list[Source], result: Result, base_weights=None) -> float:
    """‖ΔW(result) − Σ wᵢ ΔWᵢ‖_F / ‖Σ wᵢ ΔWᵢ‖_F over every layer (what ties/dare change on purpose)."""
    per_module = contributions(sources, result.family)
    num = den = 0.0
    for name, terms in per_module.items():
        weight = (base_weights or {}).get(name)
        target = _weighted_sum(terms, weight)
        got = dense(result.layers[name], weight)
        num += float(torch.linalg.matrix_norm(got - target)) ** 2
        den += float(torch.linalg.matrix_norm(target)) ** 2
    return math.sqrt(num / den) if den > 0 else 0.0
