"""``lorastack extract``: a LoRA from a fine-tuned checkpoint, the difference to its base re-factored per layer.

Both models are loaded the way ``generate`` loads a base (single files in their original layout or diffusers
folders, every supported family), so their modules meet under the same canonical names. For every Linear/Conv2d
weight of the chosen components, ΔW = W_tuned − W_base is re-factored by its truncated SVD to ``--rank`` (or a rank
chosen by one of kohya's criteria, capped at ``--rank`` when given). Layers whose largest change is at most
``--min-diff`` are left out (unchanged ones always are).

``--clamp-quantile Q`` does what kohya's ``extract_lora_from_models.py --clamp_quantile`` does, so a user moving
from it gets the same file: σ is put into the up factor, and both factors are clamped to ±h where h is the Q-quantile
of their joint *signed* values (not of their magnitudes). Factor values are near-symmetric about 0, so Q = 0.99
clamps about 2·(1 − Q) of them (≈ 2 %), not 1 %; the share actually clamped and the error it costs are reported per
layer (``clamped_share``; the measured error includes the clamp).

The relative error ‖ΔW − LoRA‖_F / ‖ΔW‖_F is measured for every layer; kohya's script reports none. What a LoRA
cannot hold is reported too instead of being dropped silently: the biases of the extracted layers and every other
changed tensor (norms, embeddings, the modules of components not chosen), with how large the change is
(``left_out`` in the summary).
"""

from __future__ import annotations

import math

import torch

from .arith import (
    ArithmeticInputError,
    LayerReport,
    check_dynamic,
    check_rank,
    choose_rank,
    measured_error,
    spectrum_stats,
    svd_dense,
)
from .arith_result import Result


def parse_components(text: str | None, family: str) -> tuple[str, ...]:
    """``unet,text_encoder`` → the components, checked against the family's (all of them when ``text`` is empty)."""
    from lorastack.adapters.families import FAMILY_TABLE

    allowed = FAMILY_TABLE[family].components
    if not text:
        return allowed
    wanted = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    bad = [c for c in wanted if c not in allowed]
    if bad or not wanted:
        raise ArithmeticInputError(
            f"--components {text!r}: {', '.join(bad) or 'none given'} is not a component of a {family} base; "
            f"choose from {', '.join(allowed)}"
        )
    return wanted


def extract(
    base_pipe,
    tuned_pipe,
    *,
    rank: int | None = None,
    dynamic: str | None = None,
    target: float | None = None,
    components: str | None = None,
    clamp_quantile: float | None = None,
    min_diff: float = 0.0,
    sources: list[dict] | None = None,
) -> Result:
    """The LoRA that takes ``base_pipe`` to ``tuned_pipe`` (see the module docstring)."""
    from .modules import ModuleIndex, pipeline_family

    check_dynamic(dynamic, target)
    check_rank(rank)
    if rank is None and dynamic is None:
        raise ArithmeticInputError("give --rank R or --dynamic sv_ratio|sv_fro|sv_cumulative --target X")
    if clamp_quantile is not None and not 0.5 <= clamp_quantile <= 1:
        raise ArithmeticInputError(f"--clamp-quantile {clamp_quantile:g} is out of range; give 0.5 to 1 (kohya: 0.99)")
    if not min_diff >= 0:
        raise ArithmeticInputError(f"--min-diff {min_diff:g} must be 0 or more")
    family, tuned_family = pipeline_family(base_pipe), pipeline_family(tuned_pipe)
    if family != tuned_family:
        raise ArithmeticInputError(f"the base is {family} and the tuned model is {tuned_family}; give one family")
    chosen = parse_components(components, family)
    base_index, tuned_index = ModuleIndex(base_pipe), ModuleIndex(tuned_pipe)
    names = [n for n in base_index.names() if n.partition(".")[0] in chosen]
    missing = [n for n in names if n not in tuned_index]
    if missing:
        raise ArithmeticInputError(
            f"the tuned model lacks {len(missing)} of the base's layers (e.g. {missing[0]}); is it the same model?"
        )
    layers, reports = {}, []
    with torch.no_grad():
        for name in names:
            w0, w1 = base_index.get(name).weight, tuned_index.get(name).weight
            if w0.shape != w1.shape:
                raise ArithmeticInputError(
                    f"{name}: the base weight is {tuple(w0.shape)}, the tuned {tuple(w1.shape)}"
                )
            diff = (w1.float() - w0.float()).reshape(w0.shape[0], -1)
            if not torch.isfinite(diff).all():
                raise ArithmeticInputError(f"{name}: the tuned model's weight holds NaN or infinite values")
            biggest = float(diff.abs().max())
            if biggest == 0.0 or biggest <= min_diff:
                continue
            layer, report = _extract_layer(name, diff, tuple(w0.shape), rank, dynamic, target, clamp_quantile)
            layers[name] = layer
            reports.append(report)
    if not layers:
        raise ArithmeticInputError("the tuned model does not differ from the base in the chosen components")
    settings = {
        "rank": rank,
        "dynamic": dynamic,
        "target": target,
        "components": list(chosen),
        "clamp_quantile": clamp_quantile,
        "min_diff": min_diff,
    }
    result = Result("extract", family, layers, reports, sources or [], settings)
    left = left_out(base_pipe, tuned_pipe, set(layers))
    if left:
        result.left_out["not_a_lora"] = left
    return result


def left_out(base_pipe, tuned_pipe, extracted: set[str]) -> dict | None:
    """Every changed tensor of the two models that the extracted LoRA does not carry (biases, norms, embeddings,
    layers below --min-diff or outside --components): how many, their joint ‖Δ‖ relative to their joint ‖W‖, and
    the largest."""
    from lorastack.adapters.naming import COMPONENTS

    count, diff2, norm2, worst, worst_value = 0, 0.0, 0.0, None, 0.0
    for component in COMPONENTS:
        a, b = getattr(base_pipe, component, None), getattr(tuned_pipe, component, None)
        if a is None or b is None or not hasattr(a, "state_dict"):
            continue
        tuned_state = b.state_dict()
        for key, w0 in a.state_dict().items():
            module, _, field = key.rpartition(".")
            if field == "weight" and f"{component}.{module}" in extracted:
                continue
            w1 = tuned_state.get(key)
            if w1 is None or w1.shape != w0.shape or not w0.is_floating_point():
                continue
            d = float((w1.float() - w0.float()).norm())
            if d == 0.0:
                continue
            count += 1
            diff2 += d * d
            norm2 += float(w0.float().norm()) ** 2
            if d > worst_value:
                worst, worst_value = f"{component}.{key}", d
    if not count:
        return None
    return {"tensors": count, "norm": math.sqrt(diff2), "relative": math.sqrt(diff2 / norm2) if norm2 else math.inf,
            "largest": worst, "largest_norm": worst_value}  # fmt: skip


def clamp_value(values: torch.Tensor, q: float) -> float:
    """``torch.quantile(values, q)`` (linear interpolation) for any size: torch.quantile refuses inputs of more than
    2²⁴ values, which the factors of a large layer at a high rank exceed."""
    flat = values.flatten()
    if flat.numel() <= 1 << 24:
        return float(torch.quantile(flat, q))
    position = q * (flat.numel() - 1)
    lo = math.floor(position)
    low = torch.kthvalue(flat, lo + 1).values
    high = torch.kthvalue(flat, min(lo + 2, flat.numel())).values
    return float(low + (high - low) * (position - lo))


def _extract_layer(name, diff, shape, rank, dynamic, target, clamp_quantile):
    from lorastack.adapters import LoRALayer

    from .arith import lora_from_spectrum

    spec = svd_dense(diff)
    k = choose_rank(spec.S, rank, dynamic, target)
    if clamp_quantile is None:
        layer = lora_from_spectrum(spec, k, shape)
    else:
        # kohya's split and clamp: up = U·diag(S), down = Vh, both clamped to ±(the quantile of their joint values), as
        # extract_lora_from_models.py computes it (of the signed values, not their magnitudes)
        up, down = spec.U[:, :k] * spec.S[:k], spec.Vh[:k]
        joint = torch.cat([up.flatten(), down.flatten()])
        hi = clamp_value(joint, clamp_quantile)
        clamped = float((joint.abs() > hi).float().mean())
        up, down = up.clamp(-hi, hi), down.clamp(-hi, hi)
        if len(shape) == 4:
            up, down = up.reshape(shape[0], k, 1, 1), down.reshape(k, *shape[1:])
        layer = LoRALayer(down.contiguous(), up.contiguous(), alpha=float(k))
    report = LayerReport(
        name, k, float(torch.linalg.matrix_norm(diff)), measured_error(layer, diff), **spectrum_stats(spec.S, k)
    )
    if clamp_quantile is not None:
        report.clamped_share = clamped
    return layer, report
