"""How :class:`~lorastack.core.stack.AdapterStack` applies adapters, layer by layer: patched into the weight
(``merge``), added in the forward pass with the base weight untouched (``bypass``, :mod:`lorastack.core.bypass`), or
chosen per layer (``auto``: bypass the quantized or offloaded layers, :func:`~lorastack.core.quantized.bypass_reason`,
merge the others); and the report that says which mode each layer took and why.
"""

from __future__ import annotations

from typing import Any

import torch

from lorastack.adapters import Layer
from lorastack.adapters.slices import RowSliceLayer

from .errors import IncompatibleAdapterError
from .quantized import bypass_reason, compute_dtype, dequantized_weight, execution_device, weight_shape

#: How adapters are applied: patched into the weights, added in the forward pass, or chosen per layer.
APPLY_MODES = ("auto", "merge", "bypass")

Contribution = tuple[tuple[str, float], ...]  # (adapter name, scale) per adapter that adds to a module


class ApplyModes:
    """The apply-mode part of :class:`~lorastack.core.stack.AdapterStack` (which owns ``mode``, ``bypass``,
    ``_modes``, ``index`` and the loaded adapters these methods read)."""

    def module_mode(self, module_name: str) -> tuple[str, str]:
        """``("merge" | "bypass", why)`` for a module of the base, decided once from the stack's mode and the layer."""
        if module_name not in self._modes:
            module = self.index.get(module_name).module
            reason = bypass_reason(module)
            if self.mode == "bypass":
                self._modes[module_name] = ("bypass", "bypass mode" + (f", {reason}" if reason else ""))
            elif reason is None:
                self._modes[module_name] = ("merge", "merge mode" if self.mode == "merge" else "a plain weight")
            elif self.mode == "merge":
                raise IncompatibleAdapterError(
                    f"{module_name} is {reason}: merge mode cannot patch its weight exactly; use bypass or auto"
                )
            else:
                self._modes[module_name] = ("bypass", reason)
        return self._modes[module_name]

    def apply_report(self) -> dict[str, Any]:
        """How the loaded adapters' modules take them: ``{"mode", "merge": n, "bypass": n, "layers": {module:
        {"mode", "why"}}}``."""
        names = sorted({m for a in self._adapters.values() for m in a.layers})
        layers = {m: dict(zip(("mode", "why"), self.module_mode(m), strict=True)) for m in names}
        counts = {k: sum(1 for v in layers.values() if v["mode"] == k) for k in ("merge", "bypass")}
        return {"mode": self.mode, **counts, "layers": layers}

    def _write_bypass(self, module_name: str, contributions: Contribution) -> None:
        module = self.index.get(module_name).module
        shape = weight_shape(module)

        def dense(layer: Layer) -> torch.Tensor:
            if layer.is_dora:
                return layer.delta(dequantized_weight(module).to(next(iter(layer.tensors().values())).device))
            if isinstance(layer, RowSliceLayer):
                return self._slice_delta(layer, shape)
            return layer.delta(shape=shape)

        terms = [(s, self._adapters[name].layers[module_name]) for name, s in contributions]
        device = execution_device(module, self._device())
        self.bypass.write(module_name, module, shape, device, compute_dtype(module), terms, dense)
