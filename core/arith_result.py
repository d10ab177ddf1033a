"""An arithmetic result (``Result``): its layers, the report per layer, the record its file's header carries, and
the one way every command writes it (validated, atomic, then registered)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorastack.adapters import Adapter, Layer, LoRALayer

from .arith import _HEADER_LAYERS, RECORD_KEY, ArithmeticInputError, LayerReport, check_result_layer


def replace_floats(value: Any, replace: Callable[[float], Any]) -> Any:
    """``value`` (JSON-like: dicts, lists) with every non-finite float replaced by ``replace(it)``, which JSON can
    hold (``None`` in a header, ``"inf"`` for an identical image's PSNR)."""
    if isinstance(value, float) and not math.isfinite(value):
        return replace(value)
    if isinstance(value, dict):
        return {k: replace_floats(v, replace) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_floats(v, replace) for v in value]
    return value


@dataclass
class Result:
    """An arithmetic result: its layers, the report per layer, and the record written into the file."""

    method: str
    family: str
    layers: dict[str, Layer]
    reports: list[LayerReport]
    sources: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    check: dict[str, Any] | None = None
    #: what the result does not carry that the inputs changed (bias differences, norms): name → a size report
    left_out: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        total = math.sqrt(sum(r.target_norm**2 for r in self.reports))
        error = math.sqrt(sum(r.error**2 for r in self.reports))
        fro = [r.fro_retained for r in self.reports if r.fro_retained is not None]
        ranks = [r.rank for r in self.reports if r.rank is not None]
        out = {
            "layers": len(self.reports),
            "relative_error": error / total if total > 0 else 0.0,
            "max_layer_relative_error": max((r.relative_error for r in self.reports), default=0.0),
            "error": error,
            "target_norm": total,
            "ranks": sorted(set(ranks)),
            "full_layers": sum(1 for r in self.reports if r.rank is None),
        }
        if fro:
            mean = sum(fro) / len(fro)
            out["average_fro_retained"] = mean
            out["fro_retained_std"] = math.sqrt(sum((f - mean) ** 2 for f in fro) / len(fro))
        if self.left_out:
            out["left_out"] = self.left_out
        if self.check is not None:
            out["check_prompts"] = self.check
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "family": self.family,
            "sources": self.sources,
            "settings": self.settings,
            "summary": self.summary(),
            "layers": [r.to_json() for r in self.reports],
        }

    def record(self) -> str:
        """The JSON written into the header (layers beyond a bound are left to the summary)."""
        data = self.to_json()
        if len(data["layers"]) > _HEADER_LAYERS:
            data["layers_left_out"] = len(data["layers"]) - _HEADER_LAYERS
            data["layers"] = data["layers"][:_HEADER_LAYERS]
        return json.dumps(data, sort_keys=True, allow_nan=False, default=_finite)


def _finite(value: Any) -> Any:
    return str(value)


def _json_safe(value: Any) -> Any:
    return replace_floats(value, lambda _: None)


def result_adapter(result: Result, template: Adapter | None = None, title: str | None = None) -> Adapter:
    """The result as an :class:`Adapter` whose header carries the arithmetic record."""
    from lorastack.adapters import AdapterMetadata

    meta = AdapterMetadata()
    if template is not None:
        meta.trigger_words = list(template.metadata.trigger_words)
        meta.resolution = template.metadata.resolution
    meta.title = title or f"{result.method} of {', '.join(Path(s['source']).stem for s in result.sources)}"[:200]
    summary = _json_safe(result.summary())
    meta.description = f"lorastack {result.method}: relative error {summary['relative_error']:.3e}"
    meta.raw = {RECORD_KEY: json.dumps(_json_safe(json.loads(result.record())), sort_keys=True)}
    meta.raw["ss_training_comment"] = meta.description
    return Adapter(dict(result.layers), meta, source_format="diffusers")


def writable_format(layers: dict[str, Layer], wanted: str | None, default: str) -> str:
    """``wanted``, else ``default`` when it can hold the layers, else kohya (which holds every kind)."""
    if wanted:
        return wanted
    if default == "diffusers" and any(
        not isinstance(layer, LoRALayer) or layer.mid is not None for layer in layers.values()
    ):
        return "kohya"
    return default


def write_result(
    result: Result,
    output: Path,
    fmt: str,
    *,
    template: Adapter | None = None,
    name: str | None = None,
    registry=None,
) -> dict[str, Any]:
    """Validate every layer, write the file atomically, then (``name``) register it; what was written."""
    from lorastack.adapters import write_adapter
    from lorastack.faults import crash_point

    for layer_name, layer in result.layers.items():
        check_result_layer(layer_name, layer)
    if not result.layers:
        raise ArithmeticInputError("the result has no layers (every input layer was scaled to 0 or left out)")
    adapter = result_adapter(result, template)
    family = result.family if result.family != "unknown" else None
    written = write_adapter(adapter, output, format=fmt, family=family)
    crash_point("arith.after-write")
    out: dict[str, Any] = {"output": str(written), "format": fmt}
    if name:
        from lorastack.registry import Registry

        registry = registry or Registry()
        imported = registry.import_file(
            written, name, description=adapter.metadata.description, provenance={"arithmetic": result.method}
        )
        out["registered"] = imported.version.ref
        crash_point("arith.after-register")
    return out
