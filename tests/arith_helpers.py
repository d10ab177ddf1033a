"""Adapters for the arithmetic tests: random LoRA/LoHa/LoKr/DoRA layers on a pipeline's real modules, written as
files in canonical form."""

from __future__ import annotations

from pathlib import Path

import torch

from lorastack.adapters import Adapter, LoHaLayer, LoKrLayer, LoRALayer, write_adapter
from lorastack.core.modules import ModuleIndex


def targets(pipe, components=("unet", "text_encoder"), limit: int | None = None, conv: bool = True):
    index = ModuleIndex(pipe)
    names = [n for n in index.names() if n.partition(".")[0] in components]
    if not conv:
        names = [n for n in names if index.get(n).weight.ndim == 2]
    return {n: index.get(n).weight for n in names[:limit]}


def lora_layers(weights, rank=4, alpha=2.0, seed=0, std=0.3, dora=False):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in weights.items():
        r = min(rank, w.shape[0], w[0].numel())
        down = torch.randn(r, *w.shape[1:], generator=g) * std
        up = torch.randn(w.shape[0], r, *([1, 1] if w.ndim == 4 else []), generator=g) * std
        magnitude = None
        if dora and w.ndim == 2:
            magnitude = w.float().norm(dim=1) * (1 + 0.1 * torch.rand(w.shape[0], generator=g))
        out[name] = LoRALayer(down, up, alpha=alpha, dora_scale=magnitude)
    return out


def lycoris_layers(weights, kind="loha", seed=0, std=0.3):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in weights.items():
        if w.ndim != 2:
            continue
        o, i = w.shape
        if kind == "loha":
            r = 2
            out[name] = LoHaLayer(
                *(torch.randn(s, generator=g) * std for s in ((o, r), (r, i), (o, r), (r, i))), alpha=1.0
            )
        else:
            f1 = 2 if o % 2 == 0 and i % 2 == 0 else 1
            out[name] = LoKrLayer(
                w1=torch.randn(f1, f1, generator=g), w2_a=torch.randn(o // f1, 2, generator=g) * std,
                w2_b=torch.randn(2, i // f1, generator=g) * std, alpha=2.0,
            )  # fmt: skip
    return out


def save(layers, path: Path, fmt="kohya", family="sd1") -> Path:
    write_adapter(Adapter(layers), path, format=fmt, family=family)
    return path


def kohya_rank(S, method, target, cap):
    """kohya-ss/sd-scripts networks/resize_lora.py rank_resize, written out from its definitions."""
    if method == "sv_ratio":
        index = int(torch.sum(S[0] / target < S).item()) - 1
    elif method == "sv_cumulative":
        index = int(torch.searchsorted(torch.cumsum(S, 0) / float(S.sum()), target))
    else:
        index = int(torch.searchsorted(torch.cumsum(S**2, 0) / float((S**2).sum()), target**2))
    new_rank = max(0, min(index, len(S) - 1)) + 1
    if S[0] <= 1e-6:
        return 1
    return min(new_rank, cap)
