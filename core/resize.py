"""``lorastack resize``: an adapter re-factored to a lower rank, fixed or chosen per layer by kohya's criteria.

Each layer's exact ΔW is re-factored by its truncated SVD (the optimal approximation of that rank), from the LoRA
factors directly when the layer is a plain LoRA (see :mod:`.arith`), from the full ΔW otherwise (LoHa, LoKr, Tucker
cores, fused slices; the result is a plain LoRA). ``--dynamic`` picks each layer's rank the way kohya's
``resize_lora.py`` does, with ``--rank`` as the cap (kohya's ``--new_rank``); without a cap the layer's own rank is.

A DoRA layer keeps its magnitude vector: the LoRA direction inside it is resized, and its error is reported for that
direction (the magnitude normalises whatever direction it is given, so the file's ΔW follows it).

The report holds kohya's values per layer (``sum(S) retained``, ``fro retained``, ``max(S) ratio``) and the measured
error; overall, kohya's "Average Frobenius norm retention" with its spread and the relative error of the whole.
"""

from __future__ import annotations

import dataclasses

import torch

from .arith import (
    ArithmeticInputError,
    LayerReport,
    Source,
    check_dynamic,
    check_rank,
    choose_rank,
    factors,
    layer_shape,
    lora_from_spectrum,
    measured_error,
    spectrum_of,
    spectrum_stats,
    svd_dense,
)
from .arith_result import Result


def resize(
    source: Source,
    rank: int | None = None,
    dynamic: str | None = None,
    target: float | None = None,
) -> Result:
    """``source`` re-factored to ``rank`` (every layer) or by the criterion ``dynamic`` with ``target``."""
    check_dynamic(dynamic, target)
    check_rank(rank)
    if rank is None and dynamic is None:
        raise ArithmeticInputError("give --rank R or --dynamic sv_ratio|sv_fro|sv_cumulative --target X")
    from lorastack.adapters import LoRALayer

    layers, reports = {}, []
    for name, layer in source.adapter.layers.items():
        inner = layer
        magnitude = None
        if type(layer) is LoRALayer and layer.mid is None and layer.is_dora:
            inner = dataclasses.replace(layer, dora_scale=None)  # the direction; the magnitude is kept as it is
            magnitude = layer.dora_scale
        elif layer.is_dora:
            raise ArithmeticInputError(
                f"{name}: a DoRA {layer.kind} layer has no LoRA direction to resize; merge it with --base instead"
            )
        shape = layer_shape(inner)
        if type(inner) is LoRALayer and inner.mid is None:
            up, down = factors(inner)
            spec = spectrum_of([up], [down], None)
            target_delta = up @ down
        else:
            target_delta = inner.delta().reshape(inner.out_features, -1)
            spec = svd_dense(target_delta)
        k = choose_rank(spec.S, rank, dynamic, target)
        result = lora_from_spectrum(spec, k, shape)
        report = LayerReport(
            name,
            k,
            float(torch.linalg.matrix_norm(target_delta)),
            measured_error(result, target_delta),
            **spectrum_stats(spec.S, k),
        )
        if magnitude is not None:
            result = dataclasses.replace(result, dora_scale=magnitude)
            report.kind = "lora+dora (direction)"
        layers[name] = result
        reports.append(report)
    settings = {"rank": rank, "dynamic": dynamic, "target": target}
    return Result("resize", source.adapter.family, layers, reports, [source.record()], settings)
