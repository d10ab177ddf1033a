"""Fused projections split into diffusers' modules and joined back, exactly.

Reading: a layer on a fused original module (``double_blocks.0.img_attn.qkv``, a single block's ``linear1``) becomes
one layer per diffusers module it covers. A plain LoRA (shared ``down`` r × in, ``up`` (Σ out) × r) becomes LoRAs
that share the down tensor and each keep their rows of ``up``: the same products, bit for bit. LoKr, LoHa, full
differences and LoRAs with a Tucker core become :class:`~lorastack.adapters.slices.RowSliceLayer` records of the
fused layer. A modulation whose shift/scale halves diffusers stores swapped gets its up rows (or slice rows) swapped.

Writing: the layers of the diffusers modules one original module covers are joined into one layer.

* Slices of one fused layer covering it in order → that layer (the tensors the file had).
* LoRAs sharing one down matrix and alpha (what reading a fused LoRA gives) → the shared down and the ups stacked,
  zero rows for a projection the adapter leaves alone.
* LoRAs with their own down matrices (a diffusers file) → rank Σ rⱼ: the downs stacked, the ups block-diagonal,
  and alpha = s · Σ rⱼ so that the scale s = αⱼ / rⱼ of every projection is kept (as sd-scripts'
  convert_flux_lora.py does). Projections with different scales have the ratio folded into their up block
  (exact up to one rounding of those up values).
* Anything else (a LoKr on ``to_q`` alone, DoRA with a projection missing) cannot be expressed on the fused module,
  and the conversion is refused with one line.
"""

from __future__ import annotations

import torch

from .errors import InvalidAdapterError, UnsupportedAdapterError, shown
from .layers import Layer, LoRALayer
from .mmdit import FLUX_MLP_RATIO, Source
from .slices import RowSliceLayer

Rows = tuple[tuple[int, int], ...]


def _in_features(layer: Layer) -> int:
    return layer.in_features if layer.in_features is not None else layer.in_numel


def _swapped(source: Source, out: int, width: int) -> bool:
    return source.swap_candidate and out == 2 * width


def source_rows(source: Source, layer: Layer) -> list[Rows]:
    """The row ranges of ``layer`` (on ``source``) that are each of ``source.modules``, in order."""
    n, width = layer.out_features, _in_features(layer)
    name = shown(source.original, 120)
    count = len(source.modules)
    if count == 1:
        if _swapped(source, n, width):
            half = n // 2
            return [((half, n), (0, half))]
        return [((0, n),)]
    if count == 3:
        if n % 3:
            raise InvalidAdapterError(
                f"{name}: a fused q, k, v layer has {n} output rows, which do not split into 3 equal projections"
            )
        d = n // 3
        return [((0, d),), ((d, 2 * d),), ((2 * d, n),)]
    # a single block's linear1: q, k, v of the block's width each, then the MLP input
    if n <= 3 * width:
        raise InvalidAdapterError(
            f"{name}: a fused q, k, v, mlp layer has {n} output rows; with input width {width} it needs more than "
            f"{3 * width}"
        )
    return [((0, width),), ((width, 2 * width),), ((2 * width, 3 * width),), ((3 * width, n),)]


def _plain(layer: Layer) -> bool:
    return isinstance(layer, LoRALayer) and layer.mid is None


def _take(t: torch.Tensor, rows: Rows) -> torch.Tensor:
    if len(rows) == 1:
        a, b = rows[0]
        return t[a:b]
    return torch.cat([t[a:b] for a, b in rows])


def split(source: Source, layer: Layer) -> dict[str, Layer]:
    """``{diffusers path: layer}`` for a layer read on an original-layout module."""
    ranges = source_rows(source, layer)
    if len(ranges) == 1 and ranges[0] == ((0, layer.out_features),):
        return {source.modules[0]: layer}
    out: dict[str, Layer] = {}
    dora = layer.dora_scale
    for module, rows in zip(source.modules, ranges, strict=True):
        if _plain(layer) and (dora is None or dora.numel() == layer.out_features):
            magnitude = None if dora is None else _take(dora.reshape(layer.out_features, -1), rows).reshape(-1)
            out[module] = LoRALayer(layer.down, _take(layer.up, rows), alpha=layer.alpha, dora_scale=magnitude)
        elif dora is not None and dora.numel() != layer.out_features:
            # LyCORIS' per-input-column norm runs over every row of the fused weight, which no projection has
            raise UnsupportedAdapterError(
                f"{shown(source.original, 120)}: DoRA with per-input norms on a fused module cannot be applied per "
                "projection; only per-output (wd_on_out) DoRA can"
            )
        else:
            out[module] = RowSliceLayer(layer, rows, source.original)
    return out


# --- joining ----------------------------------------------------------------------------------------------------
def _sizes(source: Source, pieces: dict[int, Layer]) -> list[int]:
    """Output rows of every module of a fused source, from the pieces present."""
    count = len(source.modules)
    any_piece = next(iter(pieces.values()))
    width = _in_features(any_piece)
    if count == 3:
        return [any_piece.out_features] * 3
    mlp = pieces[3].out_features if 3 in pieces else FLUX_MLP_RATIO * width
    return [width, width, width, mlp]


def _refuse(source: Source, pieces: dict[int, Layer], why: str) -> UnsupportedAdapterError:
    kinds = ", ".join(sorted({p.kind_label for p in pieces.values()}))
    modules = ", ".join(source.modules[j] for j in sorted(pieces))
    return UnsupportedAdapterError(
        f"cannot write {kinds} layers on {shown(modules, 160)} as the fused {source.original} ({why})"
    )


def join(source: Source, pieces: dict[int, Layer]) -> Layer:
    """The one layer on ``source`` whose delta rows are the pieces' deltas (``pieces``: position → layer)."""
    if len(source.modules) == 1:
        return _join_single(source, pieces[0])
    slices = [p for p in pieces.values() if isinstance(p, RowSliceLayer)]
    if slices:
        parent = slices[0].parent
        if len(slices) == len(pieces) == len(source.modules) and all(s.parent is parent for s in slices):
            expected = source_rows(source, parent)
            if [pieces[j].rows for j in range(len(source.modules))] == expected:
                return parent
        raise _refuse(source, pieces, "only the whole fused layer they were read from can be written back")
    if not all(_plain(p) for p in pieces.values()):
        raise _refuse(source, pieces, "only LoRA layers can be fused")
    sizes = _sizes(source, pieces)
    first = next(iter(pieces.values()))
    shared = all(
        _same(p.down, first.down) and p.alpha == first.alpha and (p.dora_scale is None) == (first.dora_scale is None)
        for p in pieces.values()
    )
    doras = [p.dora_scale for p in pieces.values() if p.dora_scale is not None]
    if doras and (not shared or len(pieces) < len(sizes)):
        raise _refuse(source, pieces, "DoRA magnitudes of separate projections cannot be fused")
    if shared:
        ups = [
            pieces[j].up if j in pieces else first.up.new_zeros((size, *first.up.shape[1:]))
            for j, size in enumerate(sizes)
        ]
        magnitude = torch.cat([p.dora_scale.reshape(-1) for _, p in sorted(pieces.items())]) if doras else None
        if magnitude is not None:
            magnitude = magnitude.reshape(-1)
        return LoRALayer(first.down, torch.cat(ups), alpha=first.alpha, dora_scale=magnitude)
    return _block_diagonal(pieces, sizes)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a is b:
        return True
    if a.shape != b.shape or a.dtype != b.dtype or a.is_meta or b.is_meta:  # shapes-only tensors: only identity
        return False
    return torch.equal(a, b.to(a.device))


def _block_diagonal(pieces: dict[int, Layer], sizes: list[int]) -> LoRALayer:
    ordered = sorted(pieces.items())
    total_rank = sum(p.rank for _, p in ordered)
    first = ordered[0][1]
    scale = first.scale
    down = torch.cat([p.down for _, p in ordered])
    up = first.up.new_zeros((sum(sizes), total_rank, *first.up.shape[2:]))
    starts = [sum(sizes[:j]) for j in range(len(sizes))]
    r = 0
    for j, p in ordered:
        block = p.up if p.scale == scale else p.up * (p.scale / scale)
        up[starts[j] : starts[j] + sizes[j], r : r + p.rank] = block
        r += p.rank
    return LoRALayer(down, up, alpha=scale * total_rank)


def _join_single(source: Source, layer: Layer) -> Layer:
    if not _swapped(source, layer.out_features, _in_features(layer)):
        if isinstance(layer, RowSliceLayer) and layer.whole:
            return layer.parent
        return layer
    half = layer.out_features // 2
    swap = ((half, layer.out_features), (0, half))
    if isinstance(layer, RowSliceLayer) and layer.rows == swap:
        return layer.parent
    if _plain(layer):
        dora = layer.dora_scale
        magnitude = None if dora is None else _take(dora.reshape(layer.out_features, -1), swap).reshape(-1)
        return LoRALayer(layer.down, _take(layer.up, swap), alpha=layer.alpha, dora_scale=magnitude)
    raise _refuse(source, {0: layer}, "its shift and scale halves are stored swapped, which only a LoRA can express")
