"""LoRA arithmetic, the shared part: inputs, exact per-layer ΔW, truncated SVDs, kohya's rank criteria, per-layer
reports (the result and its writing: :mod:`.arith_result`).

``merge``, ``resize``, ``extract`` and ``bake --as-lora`` (:mod:`.merge`, :mod:`.resize`, :mod:`.extract`,
:mod:`.bake`) all end the same way: a target ΔW per module, re-factored to a rank, the error measured against the
target, and one adapter file whose header says what it came from. Everything goes through the canonical layers of
:mod:`lorastack.adapters`, so every input format (kohya, diffusers/peft, LyCORIS LoHa/LoKr/full, DoRA, fused
Flux/SD3 slices) contributes its exact ΔW.

A LoRA's ΔW is factored without forming it (:mod:`.arith_svd`): kohya's ``resize_lora.py`` multiplies U·D out
and takes the SVD of the whole ``out × in`` matrix; the result is the same, the work ``O((out + in)·r²)``.

The rank criteria follow kohya-ss/sd-scripts ``networks/resize_lora.py`` to the letter (``index_sv_ratio``,
``index_sv_fro``, ``index_sv_cumulative``, ``rank_resize``: a zero matrix keeps rank 1, a rank above the cap is
capped), and so do the per-layer report values: ``sum(S) retained``, ``fro retained``, ``max(S) ratio``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from lorastack.adapters import Adapter, FullLayer, Layer, LoRALayer
from lorastack.adapters.errors import shown
from lorastack.adapters.layers import all_finite
from lorastack.adapters.slices import RowSliceLayer
from lorastack.errors import LorastackError

from .arith_svd import (
    _INDEX,
    Spectrum,
    index_sv_cumulative,
    index_sv_fro,
    index_sv_ratio,
    spectrum_of,
    svd_dense,
    svd_factored,
)

#: the SVD helpers every command imports from here
__all__ = ["Spectrum", "index_sv_cumulative", "index_sv_fro", "index_sv_ratio", "spectrum_of", "svd_dense",
           "svd_factored"]  # fmt: skip

#: kohya's dynamic criteria (``--dynamic_method``) and what their target means
DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")
#: kohya's MIN_SV: a layer whose largest singular value is below this is a zero matrix (kept at rank 1)
MIN_SV = 1e-6
#: the largest rank any arithmetic result may ask for (a LoRA of more than this is no longer low-rank)
MAX_RANK = 4096
#: header key holding the arithmetic record (JSON)
RECORD_KEY = "lorastack_arithmetic"
#: the layers listed one by one in the header's record (the summary covers all of them)
_HEADER_LAYERS = 2000


class ArithmeticInputError(LorastackError, ValueError):
    """Arithmetic that cannot be done as asked: mismatched families, a rank the layer cannot have, a bad target."""


@dataclass
class Source:
    """One input of an arithmetic command: the adapter, how it was named, its hashes and its scale."""

    label: str
    adapter: Adapter
    scale: Any = 1.0
    sha256: str | None = None
    tensor_sha256: str | None = None

    def record(self) -> dict[str, Any]:
        return {"source": self.label, "sha256": self.sha256, "tensor_sha256": self.tensor_sha256, "scale": self.scale}


def load_sources(values: list[str], registry=None) -> list[Source]:
    """``A[:w]`` values (files or registry references, block weights as in ``--lora``) read and hashed."""
    from lorastack.adapters import file_and_tensor_sha256, read_adapter

    from .sources import find_adapter, parse_lora_option

    if not values:
        raise ArithmeticInputError("no input adapters; give at least one FILE[:WEIGHT]")
    out = []
    for value in values:
        request = parse_lora_option(value)
        found = find_adapter(request.source, registry)
        adapter = read_adapter(found.path)
        file_hash, data_hash = file_and_tensor_sha256(found.path)
        out.append(Source(found.label, adapter, request.scale, file_hash, data_hash))
    return out


def common_family(sources: list[Source]) -> str:
    """The one family the inputs are for; mismatched families are refused with both named."""
    known = {s.label: s.adapter.family for s in sources if s.adapter.family != "unknown"}
    families = sorted(set(known.values()))
    if len(families) > 1:
        pairs = ", ".join(f"{shown(label, 80)} is {fam}" for label, fam in known.items())
        raise ArithmeticInputError(f"the inputs are for different base families ({pairs}); merge adapters of one")
    return families[0] if families else "unknown"


def block_counts_of(sources: list[Source], family: str) -> dict[str, int] | None:
    """Transformer block counts implied by the inputs' layers (no base is loaded to read them from)."""
    from lorastack.adapters.families import FAMILY_TABLE, transformer_block

    fam = FAMILY_TABLE.get(family)
    if fam is None or not fam.transformer:
        return None
    counts = {g.name: 0 for g in fam.blocks}
    for s in sources:
        for name in s.adapter.layers:
            if name.startswith("transformer."):
                block = transformer_block(family, name.partition(".")[2])
                if block is not None:
                    counts[block[0]] = max(counts[block[0]], block[1] + 1)
    return counts


# --- per-layer ΔW ------------------------------------------------------------------------------------------------
def needs_base(layer: Layer) -> bool:
    return layer.is_dora


def _plain_lora(layer: Layer) -> bool:
    return type(layer) is LoRALayer and layer.mid is None and not layer.is_dora


def plain(layer: Layer) -> bool:
    """A LoRA whose ΔW is exactly ``scale · up @ down`` (no Tucker core, no DoRA): a LoRA, or a fused layer's rows
    of one (a kohya/BFL ``qkv`` or ``linear1`` LoRA read per projection: its up factor's rows)."""
    if isinstance(layer, RowSliceLayer):
        return _plain_lora(layer.parent)
    return _plain_lora(layer)


def factors(layer: Layer, weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, D)`` with ``weight · ΔW = U @ D`` (2-D, float32) for a :func:`plain` layer."""
    if isinstance(layer, RowSliceLayer):
        parent = layer.parent
        up = parent.up.float().reshape(parent.out_features, -1)
        up = torch.cat([up[a:b] for a, b in layer.rows]) * (weight * parent.scale)
        return up, parent.down.float().reshape(parent.rank, -1)
    up = layer.up.float().reshape(layer.out_features, -1) * (weight * layer.scale)
    return up, layer.down.float().reshape(layer.rank, -1)


def lora_only_module(family: str, name: str, shape: tuple[int, ...]) -> bool:
    """The module is part of a fused FLUX.1/SD3 module (``qkv``, ``linear1``, the modulations) or stored with its
    shift/scale halves exchanged (``norm_out``) in the original layout: the kohya/BFL writers can express only a
    LoRA there, never a full difference."""
    from lorastack.adapters.mmdit import to_original

    component, _, path = name.partition(".")
    if component != "transformer" or len(shape) != 2:
        return False
    found = to_original(family, path)
    return found is not None and (found[0].fused or found[0].swap_candidate)


def exact_lora(matrix: torch.Tensor) -> LoRALayer:
    """A full difference written exactly as a LoRA of rank min(out, in): one factor is the identity, so the product
    is the matrix itself. With ``out ≥ in`` the down factor is the identity, so the projections of one fused module
    share it and are written as one fused LoRA (``in² `` more values than the full difference)."""
    out, inner = matrix.shape
    if out >= inner:
        up, down = matrix, torch.eye(inner)
    else:
        up, down = torch.eye(out), matrix
    return LoRALayer(down.contiguous(), up.contiguous(), alpha=float(min(out, inner)))


def dense(layer: Layer, base_weight: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW at strength 1 as an ``out × in·k`` float32 matrix (DoRA layers need the base weight)."""
    if needs_base(layer) and base_weight is None:
        raise ArithmeticInputError(
            "a DoRA layer's ΔW depends on the base weight; pass --base with the model the adapter was trained on"
        )
    if base_weight is not None:
        return layer.delta(base_weight.float()).reshape(base_weight.shape[0], -1)
    return layer.delta().reshape(layer.out_features, -1)


def layer_shape(layer: Layer, base_weight: torch.Tensor | None = None) -> tuple[int, ...]:
    if base_weight is not None:
        return tuple(base_weight.shape)
    return tuple(layer.natural_shape or (layer.out_features, layer.in_numel))


# --- kohya's criteria (the SVDs and the indices are in .arith_svd) ------------------------------------------
def check_dynamic(method: str | None, target: float | None) -> None:
    if method is None:
        if target is not None:
            raise ArithmeticInputError(
                "--target is the target of --dynamic; give --dynamic sv_ratio|sv_fro|sv_cumulative"
            )
        return
    if method not in DYNAMIC_METHODS:
        raise ArithmeticInputError(f"unknown --dynamic {shown(method)}; choose one of {', '.join(DYNAMIC_METHODS)}")
    if target is None or not math.isfinite(target):
        raise ArithmeticInputError(f"--dynamic {method} needs a finite --target")
    if method == "sv_ratio" and target < 1:
        raise ArithmeticInputError(f"--target {target:g} for sv_ratio is a ratio σ_max/σ_min of at least 1")
    if method != "sv_ratio" and not 0 < target <= 1:
        raise ArithmeticInputError(f"--target {target:g} for {method} is a share from 0 (exclusive) to 1")


def check_rank(rank: int | None, what: str = "--rank") -> None:
    if rank is not None and not 1 <= rank <= MAX_RANK:
        raise ArithmeticInputError(f"{what} {rank} is out of range; ranks are 1 to {MAX_RANK}")


def choose_rank(S: torch.Tensor, rank: int | None, method: str | None, target: float | None) -> int:
    """kohya's ``rank_resize``: the criterion's rank, capped at ``rank`` (when given) and at the spectrum's size; a
    zero matrix gets rank 1."""
    cap = min(rank if rank is not None else len(S), len(S))
    new_rank = _INDEX[method](S, target) + 1 if method else cap
    if len(S) == 0 or float(S[0]) <= MIN_SV:
        return 1
    return min(new_rank, cap)


# --- results ---------------------------------------------------------------------------------------------------
@dataclass
class LayerReport:
    """How close one result layer is to its target ΔW."""

    name: str
    rank: int | None  # None: an exact full difference
    target_norm: float
    error: float  # ‖result − target‖_F, measured
    sum_retained: float | None = None
    fro_retained: float | None = None
    max_ratio: float | None = None
    optimal_error: float | None = None  # √Σ discarded σ² (the best any rank-`rank` factorisation can do)
    kind: str = "lora"
    clamped_share: float | None = None  # extract --clamp-quantile: the share of factor values clamped

    @property
    def relative_error(self) -> float:
        return self.error / self.target_norm if self.target_norm > 0 else (0.0 if self.error == 0 else math.inf)

    def to_json(self) -> dict[str, Any]:
        out = {
            "layer": self.name,
            "kind": self.kind,
            "rank": self.rank,
            "error": self.error,
            "relative_error": self.relative_error,
            "target_norm": self.target_norm,
        }
        for key in ("sum_retained", "fro_retained", "max_ratio", "optimal_error", "clamped_share"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    def line(self) -> str:
        """kohya's verbose line (``sum(S) retained … fro retained … max(S) ratio``), with the measured error."""
        text = f"{self.name:75} | rank {self.rank if self.rank is not None else 'full'}"
        if self.sum_retained is not None:
            text += (
                f", sum(S) retained: {self.sum_retained:.1%}, fro retained: {self.fro_retained:.1%}, "
                f"max(S) ratio: {self.max_ratio:0.1f}"
            )
        return text + f", relative error: {self.relative_error:.2e}"


def spectrum_stats(S: torch.Tensor, k: int) -> dict[str, float]:
    """kohya's per-module values for keeping the first ``k`` of the singular values ``S``."""
    total = float(S.abs().sum())
    squared = S.double().pow(2)
    fro = math.sqrt(float(squared.sum()))
    kept = math.sqrt(float(squared[:k].sum()))
    return {
        "sum_retained": float(S[:k].abs().sum()) / total if total > 0 else 1.0,
        "fro_retained": kept / fro if fro > 0 else 1.0,
        "max_ratio": float(S[0] / S[k - 1]) if float(S[k - 1]) > 0 else math.inf,
        "optimal_error": math.sqrt(max(float(squared[k:].sum()), 0.0)),
    }


def lora_from_spectrum(spec: Spectrum, k: int, shape: tuple[int, ...]) -> LoRALayer:
    """The rank-``k`` truncation as a LoRA of scale 1 (alpha = rank). kohya puts all of σ into ``up``; the square
    root on each side keeps both factors of one magnitude, which fp16/bf16 files store better."""
    root = spec.S[:k].clamp_min(0).sqrt()
    up = spec.U[:, :k] * root
    down = root[:, None] * spec.Vh[:k]
    out = shape[0]
    if len(shape) == 4:
        up = up.reshape(out, k, 1, 1)
        down = down.reshape(k, *shape[1:])
    return LoRALayer(down.contiguous(), up.contiguous(), alpha=float(k))


def measured_error(result: Layer, target: torch.Tensor, base_weight: torch.Tensor | None = None) -> float:
    """‖ΔW(result) − target‖_F, with the result's ΔW computed by the same code the stack patches with."""
    got = dense(result, base_weight)
    return float(torch.linalg.matrix_norm(got - target.reshape(got.shape)))


def check_result_layer(name: str, layer: Layer, base_shape: tuple[int, ...] | None = None) -> None:
    """Refuse what must not be written: non-finite values, a rank larger than the layer, a shape not the base's."""
    for field_name, t in layer.tensors().items():
        if not all_finite(t):
            raise ArithmeticInputError(f"{shown(name, 120)}: the result's {field_name} holds NaN or infinite values")
    if layer.rank is not None and layer.rank > min(layer.out_features, layer.in_numel):
        raise ArithmeticInputError(
            f"{shown(name, 120)}: rank {layer.rank} is larger than the layer ({layer.out_features} x {layer.in_numel})"
        )
    if base_shape is not None and (layer.out_features, layer.in_numel) != (base_shape[0], math.prod(base_shape[1:])):
        raise ArithmeticInputError(f"{shown(name, 120)}: the result does not fit the base weight {base_shape}")


def is_full(layer: Layer) -> bool:
    return isinstance(layer, FullLayer)
