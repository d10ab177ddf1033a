"""Bypass mode: adapters added in the forward pass, the base weights never touched.

A bypassed module keeps its weight exactly as loaded (an NF4/int8/GGUF/fp8 tensor stays byte for byte what it was)
and gets one forward hook that adds every active adapter's contribution to its output::

    y = base(x) + (x @ Dᵀ) @ Uᵀ + x @ ΔWᵀ + Δb

* ``D``/``U`` is **one** low-rank path for all active plain LoRA/LoCon layers of the module: their down matrices
  stacked (``D = [down₁; down₂; …]``) and their up matrices side by side, each scaled by its strength and
  alpha/rank (``U = [s₁·α₁/r₁·up₁ | s₂·α₂/r₂·up₂ | …]``), so a module does two small GEMMs (two convolutions for a
  conv) whatever the number of adapters, not one pair per adapter. A Tucker LoCon (LyCORIS ``lora_mid``) joins the
  same path with its core folded into its down matrix (``down' = mid ×₂ down``, exact).
* ``ΔW`` is a **dense fallback**, the sum ``Σ sᵢ·ΔWᵢ`` computed once per switch, for the layers whose delta is not a
  plain low-rank product: LoHa (a Hadamard product of two rank-r products has rank up to r²), LoKr (a Kronecker
  product), full differences, DoRA (its delta depends on the base weight: the weight is dequantized once per switch
  to compute it), the slices of a fused layer that is not a plain LoRA, and LoRAs on grouped convolutions.
* ``Δb``: the bias differences full layers carry.

A switch or a scale change recomputes the factors of the modules that change and nothing else. With ``capacity``
(compiled pipelines) the factors live in fixed-shape buffers, ``D`` and ``U`` zero-padded to that rank, so a switch
only copies into them and a compiled graph never sees a new shape (no recompilation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from lorastack.adapters import Layer, LoRALayer

logger = logging.getLogger(__name__)

#: One active adapter layer of a module: (strength, layer).
Term = tuple[float, Layer]


def low_rank_factors(layer: Layer) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(down r×in…, up out×r)`` at strength 1 (alpha/rank applied to ``up``), or ``None`` when the layer's delta is
    not one low-rank product (it then takes the dense path)."""
    if not isinstance(layer, LoRALayer) or layer.is_dora:
        return None
    up = layer.up.float().flatten(1) * layer.scale
    if layer.mid is None:
        return layer.down.float(), up
    # a Tucker core between up and down: fold it into down, ΔW = up @ (mid ×₂ down) exactly
    down = torch.einsum("m n ..., n j -> m j ...", layer.mid.float(), layer.down.float().flatten(1))
    return down, up


class BypassPath(torch.nn.Module):
    """The contribution of the active adapters to one ``nn.Linear``/``nn.Conv2d`` (quantized or not)."""

    def __init__(self, module: torch.nn.Module, shape: tuple[int, ...], device, dtype, capacity: int | None = None):
        super().__init__()
        self.conv = len(shape) == 4
        self.shape = tuple(shape)
        if self.conv:
            self.stride, self.padding = module.stride, module.padding
            self.dilation, self.groups = module.dilation, module.groups
        self.capacity = capacity
        self.device, self.dtype = torch.device(device), dtype
        self.register_buffer("down", None)
        self.register_buffer("up", None)
        self.register_buffer("dense", None)
        self.register_buffer("bias", None)
        if capacity is not None:
            self.reserve(capacity, dense=False)

    @property
    def fixed(self) -> bool:
        return self.capacity is not None

    def reserve(self, capacity: int, dense: bool) -> None:
        """Fixed-shape buffers: ``D``/``U`` of rank ``capacity`` (zeros), and a dense ``ΔW`` and ``Δb`` if asked."""
        out, in_numel = self.shape[0], int(torch.Size(self.shape[1:]).numel())
        self.capacity = capacity
        self.down = self._zeros(capacity, *self.shape[1:]) if self.conv else self._zeros(capacity, in_numel)
        self.up = self._zeros(out, capacity)
        if dense:
            self.dense = self._zeros(*self.shape)
            self.bias = self._zeros(out)

    def _zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(shape, device=self.device, dtype=self.dtype)

    @property
    def empty(self) -> bool:
        return self.down is None and self.dense is None and self.bias is None

    @torch.no_grad()
    def set(self, downs: Sequence[torch.Tensor], ups: Sequence[torch.Tensor], dense, bias) -> bool:
        """Make the path hold these factors (already scaled); returns whether a buffer had to change shape (which,
        in a compiled graph, is a recompilation)."""
        rank = sum(d.shape[0] for d in downs)
        reshaped = False
        if self.fixed:
            if rank > self.capacity or ((dense is not None or bias is not None) and self.dense is None):
                reshaped = True
                self.reserve(
                    max(rank, self.capacity), dense=self.dense is not None or dense is not None or bias is not None
                )
            self.down.zero_()
            self.up.zero_()
            r = 0
            for d, u in zip(downs, ups, strict=True):
                self.down[r : r + d.shape[0]].copy_(d.reshape(d.shape[0], *self.down.shape[1:]))
                self.up[:, r : r + d.shape[0]].copy_(u)
                r += d.shape[0]
            if self.dense is not None:
                self.dense.copy_(dense if dense is not None else 0)
                self.bias.copy_(bias if bias is not None else 0)
            return reshaped
        if downs:
            down = torch.cat([d.reshape(d.shape[0], *self.shape[1:]) if self.conv else d.flatten(1) for d in downs])
            self.down = down.to(self.device, self.dtype)
            self.up = torch.cat(list(ups), 1).to(self.device, self.dtype)
        else:
            self.down = self.up = None
        self.dense = None if dense is None else dense.to(self.device, self.dtype)
        self.bias = None if bias is None else bias.to(self.device, self.dtype)
        return False

    def forward(self, x: torch.Tensor) -> torch.Tensor | None:
        x = x.to(self.dtype)
        y = None
        if self.down is not None:
            if self.conv:
                h = F.conv2d(x, self.down, None, self.stride, self.padding, self.dilation)
                y = F.conv2d(h, self.up[:, :, None, None])
            else:
                y = F.linear(F.linear(x, self.down), self.up)
        if self.dense is not None:
            if self.conv:
                d = F.conv2d(x, self.dense, None, self.stride, self.padding, self.dilation, self.groups)
            else:
                d = F.linear(x, self.dense)
            y = d if y is None else y + d
        if self.bias is not None:
            b = self.bias[:, None, None] if self.conv else self.bias
            y = b if y is None else y + b
        return y


def _hook(path: BypassPath):
    def add(module, args, output):
        extra = path(args[0])
        return output if extra is None else output + extra.to(output.dtype)

    return add


class Bypass:
    """The bypassed modules of one pipeline: their paths and hooks."""

    def __init__(self):
        self.paths: dict[str, BypassPath] = {}
        self._handles: dict[str, torch.utils.hooks.RemovableHandle] = {}
        #: buffers that had to change shape after being reserved (each a recompilation of a compiled graph)
        self.reshaped = 0
        #: set once the denoiser is compiled: a path added after that is a new hook, so a recompilation
        self.compiled = False

    def __contains__(self, name: str) -> bool:
        return name in self.paths

    def active(self) -> list[str]:
        return [n for n, p in self.paths.items() if not p.empty]

    def reserve(self, name: str, module, shape, device, dtype, capacity: int, dense: bool) -> None:
        """A fixed-shape path on ``module`` now, so later switches only copy into it (see :mod:`.compiled`)."""
        path = self.paths.get(name)
        if path is None:
            path = self._attach(name, module, shape, device, dtype, capacity)
        if not path.fixed or path.capacity < capacity or (dense and path.dense is None):
            path.reserve(max(capacity, path.capacity or 0), dense=dense or path.dense is not None)

    def _attach(self, name, module, shape, device, dtype, capacity=None) -> BypassPath:
        path = BypassPath(module, shape, device, dtype, capacity)
        self.paths[name] = path
        self._handles[name] = module.register_forward_hook(_hook(path))
        return path

    def write(self, name: str, module, shape, device, dtype, terms: Sequence[Term],
              dense_delta: Callable[[Layer], torch.Tensor]) -> None:  # fmt: skip
        """Make ``module``'s path hold exactly ``terms`` (empty: no contribution; an unreserved path is removed)."""
        path = self.paths.get(name)
        if not terms:
            if path is None:
                return
            if path.fixed:
                path.set([], [], None, None)
            else:
                self.remove(name)
            return
        downs, ups, dense, bias = [], [], None, None
        grouped = len(shape) == 4 and getattr(module, "groups", 1) != 1
        for s, layer in terms:
            factors = None if grouped else low_rank_factors(layer)
            if factors is not None:
                down, up = factors
                downs.append(down.to(device))
                ups.append(up.to(device) * s)
                continue
            delta = dense_delta(layer).to(device, torch.float32) * s
            dense = delta if dense is None else dense.add_(delta)
            bias_delta = layer.bias_delta()
            if bias_delta is not None:
                b = bias_delta.to(device, torch.float32) * s
                bias = b if bias is None else bias.add_(b)
        if path is None:
            if self.compiled and name.partition(".")[0] in ("unet", "transformer"):
                self.reshaped += 1
                logger.warning(f"{name} was not reserved when the denoiser was compiled; adding it recompiles once")
            path = self._attach(name, module, shape, device, dtype)
        if path.set(downs, ups, dense, bias):
            self.reshaped += 1
            logger.warning(
                f"{name}: the active adapters need rank {sum(d.shape[0] for d in downs)}"
                f"{' and a dense path' if dense is not None else ''}, more than reserved; the buffers grew (a "
                "compiled denoiser recompiles once)"
            )

    def remove(self, name: str) -> None:
        handle = self._handles.pop(name, None)
        if handle is not None:
            handle.remove()
        self.paths.pop(name, None)

    def clear(self) -> None:
        for name in list(self.paths):
            self.remove(name)
