"""``lorastack extract``: a LoRA from a fine-tuned checkpoint, the difference to its base re-factored per layer.

Both models are loaded the way ``generate`` loads a base (single files in their original layout or diffusers
folders, every supported family), so their modules meet under the same canonical names. For every Linear/Conv2d
weight of the chosen components, ΔW = W_tuned − W_base is re-factored by its truncated SVD to ``--rank`` (or a rank
chosen by one of kohya's criteria, capped at ``--rank`` when given). ``--clamp-quantile`` clamps the factors to ± that
quantile of their values, as kohya's ``extract_lora_from_models.py`` does (``--clamp_quantile 0.99``; it
puts σ into the up factor before clamping, and so does this). Layers whose largest change is at most ``--min-diff``
are left out (unchanged ones always are).

The relative error ‖ΔW − LoRA‖_F / ‖ΔW‖_F is measured for every layer; kohya's script reports none.
"""

from __future__ import annotations

import torch

from .arith import (
    ArithmeticInputError,
    LayerReport,
    Result,
    check_dynamic,
    check_rank,
    choose_rank,
    measured_error,
    spectrum_stats,
    svd_dense,
)


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
    return Result("extract", family, layers, reports, sources or [], settings)


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
        hi = float(torch.quantile(torch.cat([up.flatten(), down.flatten()]), clamp_quantile))
        up, down = up.clamp(-hi, hi), down.clamp(-hi, hi)
        if len(shape) == 4:
            up, down = up.reshape(shape[0], k, 1, 1), down.reshape(k, *shape[1:])
        layer = LoRALayer(down.contiguous(), up.contiguous(), alpha=float(k))
    report = LayerReport(
        name, k, float(torch.linalg.matrix_norm(diff)), measured_error(layer, diff), **spectrum_stats(spec.S, k)
    )
    return layer, report
