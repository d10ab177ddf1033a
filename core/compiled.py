"""A compiled denoiser whose adapters change without recompiling.

``torch.compile`` guards on shapes, dtypes and the module structure, not on values. So the denoiser is compiled once
and afterwards every adapter change only writes values:

* merged layers are patched in place (``W₀ + Σ sᵢ·ΔWᵢ`` copied into the same parameter);
* bypassed layers (quantized ones, or every layer in bypass mode) get their forward hook and fixed-shape buffers
  *before* compiling, the low-rank factors zero-padded to ``max_rank`` as peft's hot-swap pads LoRA weights, so a
  switch or a rescale copies into the buffers and the graph never sees a new shape.

Adapters loaded later compile nothing as long as their layers are among the reserved ones and the active ranks on
a layer sum to at most ``max_rank``; beyond that the buffers grow (one recompilation, with a warning naming the
layer). Text-encoder adapters work as usual (merged or bypassed, the text encoder is not compiled), which diffusers'
hot-swap cannot do. :func:`compile_counts` reads dynamo's counters, so a test or a benchmark can show the number
of recompilations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lorastack.adapters import LoRALayer

from .errors import ScaleError
from .modules import DENOISERS, denoiser
from .quantized import compute_dtype, execution_device, weight_shape

#: Default rank of a bypassed layer's fixed buffers: the sum of the active adapters' ranks on one layer.
DEFAULT_MAX_RANK = 64
MAX_RANK_LIMIT = 4096
BACKENDS = ("inductor", "aot_eager", "eager")


@dataclass
class CompiledDenoiser:
    """What :func:`compile_denoiser` did: which layers have reserved buffers, at which rank, with which backend."""

    backend: str
    max_rank: int
    reserved: list[str]
    merged: list[str]


def compile_counts() -> dict[str, int]:
    """dynamo's counters: frames compiled and graphs produced so far in this process (a recompilation raises
    both)."""
    from torch._dynamo.utils import counters

    return {"frames": int(counters["frames"]["ok"]), "graphs": int(counters["stats"]["unique_graphs"])}


def compile_denoiser(
    stack,
    *,
    max_rank: int = DEFAULT_MAX_RANK,
    backend: str = "inductor",
    mode: str | None = None,
    targets: Iterable[str] | None = None,
) -> CompiledDenoiser:
    """Reserve the bypassed layers' buffers and compile the stack's denoiser in place (``nn.Module.compile``).

    ``targets``: the denoiser modules later adapters may touch (default: those of the adapters loaded now).
    """
    if backend not in BACKENDS:
        raise ScaleError(f"compile backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if isinstance(max_rank, bool) or not isinstance(max_rank, int) or not 1 <= max_rank <= MAX_RANK_LIMIT:
        raise ScaleError(f"max rank {max_rank!r} is not a whole number from 1 to {MAX_RANK_LIMIT}")
    loaded = [stack.get(n) for n in stack.loaded]
    if targets is None:
        names = sorted({m for a in loaded for m in a.layers if m.partition(".")[0] in DENOISERS})
    else:
        names = sorted(targets)
        unknown = [n for n in names if n not in stack.index]
        if unknown:
            raise ScaleError(f"compile targets {', '.join(unknown[:3])} are no modules of the base")
    previous = stack.active
    stack.deactivate()  # reserving replaces the bypassed layers' buffers: the stack is written again below
    reserved, merged = [], []
    for name in names:
        if stack.module_mode(name)[0] != "bypass":
            merged.append(name)
            continue
        module = stack.index.get(name).module
        dense = any(name in a.layers and not _plain(a.layers[name]) for a in loaded)
        device = execution_device(module, stack._device())
        stack.bypass.reserve(name, module, weight_shape(module), device, compute_dtype(module), max_rank, dense)
        reserved.append(name)
    denoiser(stack.pipe).compile(backend=backend, mode=mode)
    stack.bypass.compiled = True
    stack.activate(previous)
    return CompiledDenoiser(backend, max_rank, reserved, merged)


def _plain(layer) -> bool:
    return isinstance(layer, LoRALayer) and not layer.is_dora
