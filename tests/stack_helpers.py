"""Adapters for stack tests: every layer kind, on the tiny pipelines' real module names."""

from __future__ import annotations

import torch

from lorastack.adapters import Adapter, FullLayer, LoHaLayer, LoKrLayer, LoRALayer
from lorastack.core.modules import ModuleIndex


def lycoris_adapter(pipe, seed: int = 0, every: int = 3) -> Adapter:
    """One layer of a different kind on every ``every``-th patchable UNet/text-encoder module."""
    g = torch.Generator().manual_seed(seed)
    index = ModuleIndex(pipe)
    layers = {}
    for i, name in enumerate(index.names()):
        if i % every:
            continue
        weight = index.get(name).weight
        out_f, in_numel = weight.shape[0], weight[0].numel()
        kind = (i // every) % 5
        r = 2
        if kind == 0:
            layers[name] = LoHaLayer(
                torch.randn(out_f, r, generator=g) * 0.1, torch.randn(r, in_numel, generator=g) * 0.1,
                torch.randn(out_f, r, generator=g) * 0.1, torch.randn(r, in_numel, generator=g) * 0.1, alpha=1.0,
            )  # fmt: skip
        elif kind == 1 and out_f % 2 == 0:
            layers[name] = LoKrLayer(
                w1=torch.randn(2, 1, generator=g) * 0.1,
                w2_a=torch.randn(out_f // 2, r, generator=g),
                w2_b=torch.randn(r, in_numel, generator=g) * 0.1,
                alpha=2.0,
            )
        elif kind == 2:
            magnitude = weight.detach().reshape(out_f, -1).norm(dim=1) * (1.0 + 0.1 * torch.rand(out_f, generator=g))
            layers[name] = LoRALayer(
                torch.randn(r, in_numel, generator=g) * 0.2,
                torch.randn(out_f, r, generator=g) * 0.2,
                alpha=1.0,
                dora_scale=magnitude,
            )
        elif kind == 3:
            layers[name] = FullLayer(torch.randn(*weight.shape, generator=g) * 0.01)
        else:
            layers[name] = LoRALayer(
                torch.randn(r, in_numel, generator=g) * 0.2, torch.randn(out_f, r, generator=g) * 0.2, alpha=4.0
            )
    return Adapter(layers)
