"""The canonical in-memory adapter: layer records by module name, metadata, provenance of the keys."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from .families import FAMILY_TABLE, transformer_block
from .layers import Layer
from .metadata import AdapterMetadata
from .naming import COMPONENTS, split_component
from .probe import Probe, probe_family


@dataclass(eq=False)
class Adapter:
    """An adapter in canonical form.

    ``layers`` maps canonical module names (``unet.down_blocks.0.attentions.0.proj_in``,
    ``text_encoder.text_model.encoder.layers.0.self_attn.q_proj``) to :class:`~lorastack.adapters.layers.Layer`
    records. ``source_format`` is ``"diffusers"``, ``"kohya"`` or ``"bfl"`` (the original FLUX.1 / SD3 layout), a
    format :func:`~lorastack.adapters.writing.write_adapter` writes; ``key_styles`` names the key spellings seen
    (``peft``, ``diffusers``, ``diffusers-old``, ``kohya``, ``kohya-sgm``, ``onetrainer``, ``bfl``, ``xlabs``).
    Keys that mean nothing to lorastack are kept in ``unrecognized_keys`` so callers can refuse or report a partial
    read. ``layout_family``: the family whose original module names the file used (``double_blocks`` → ``"flux"``,
    ``joint_blocks`` → ``"sd3"``), evidence for the probe.
    """

    layers: dict[str, Layer]
    metadata: AdapterMetadata = field(default_factory=AdapterMetadata)
    source_format: str = "diffusers"
    key_styles: tuple[str, ...] = ()
    unrecognized_keys: tuple[str, ...] = ()
    alpha_source: str = "file"
    path: Path | None = None
    #: bundled textual-inversion embeddings: token → {"text_encoder": n×hidden, "text_encoder_2": …}
    embeddings: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    layout_family: str | None = None

    @cached_property
    def probe(self) -> Probe:
        return probe_family(self.layers, self.metadata.raw, self.layout_family)

    @property
    def family(self) -> str:
        return self.probe.family

    def components(self) -> dict[str, int]:
        """Number of layers per component, in canonical component order."""
        counts = Counter(split_component(name)[0] for name in self.layers)
        return {c: counts[c] for c in COMPONENTS if counts[c]}

    def blocks(self) -> list[str]:
        """The transformer blocks touched, in the names users type (``double.0``, ``single.3``, ``joint.2``), in
        the family's block order; empty for the UNet families and an unknown family."""
        family = FAMILY_TABLE.get(self.family)
        if family is None or not family.blocks:
            return []
        order = {g.name: n for n, g in enumerate(family.blocks)}
        touched = set()
        for name in self.layers:
            component, path = split_component(name)
            block = transformer_block(family.name, path) if component == "transformer" else None
            if block is not None:
                touched.add(block)
        return [f"{g}.{i}" for g, i in sorted(touched, key=lambda b: (order[b[0]], b[1]))]

    def kinds(self) -> dict[str, int]:
        return dict(sorted(Counter(layer.kind_label for layer in self.layers.values()).items()))

    def ranks(self) -> list[int]:
        return sorted({layer.rank for layer in self.layers.values() if layer.rank is not None})

    def alphas(self) -> list[float]:
        return sorted({float(layer.alpha) for layer in self.layers.values() if layer.alpha is not None})

    @property
    def rank(self) -> int | None:
        """The most common rank (kohya's ``network_dim``)."""
        ranks = Counter(layer.rank for layer in self.layers.values() if layer.rank is not None)
        return ranks.most_common(1)[0][0] if ranks else None

    @property
    def alpha(self) -> float | None:
        """The most common alpha (kohya's ``network_alpha``)."""
        alphas = Counter(float(layer.alpha) for layer in self.layers.values() if layer.alpha is not None)
        return alphas.most_common(1)[0][0] if alphas else None

    def unique_tensors(self) -> list[torch.Tensor]:
        """Every tensor once: the projections split from one fused module share tensors."""
        seen: dict[int, torch.Tensor] = {}
        for layer in self.layers.values():
            for t in layer.tensors().values():
                seen.setdefault(id(t), t)
        return list(seen.values())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.unique_tensors())

    def to(self, *args, **kwargs) -> Adapter:
        """A copy with every tensor moved/cast like ``Tensor.to``."""
        return Adapter(
            {name: layer.to(*args, **kwargs) for name, layer in self.layers.items()},
            self.metadata,
            self.source_format,
            self.key_styles,
            self.unrecognized_keys,
            self.alpha_source,
            self.path,
            {t: {c: v.to(*args, **kwargs) for c, v in e.items()} for t, e in self.embeddings.items()},
            self.layout_family,
        )

    def select(self, names: Iterable[str]) -> Adapter:
        """A view holding only the named layers."""
        keep = set(names)
        return Adapter(
            {n: layer for n, layer in self.layers.items() if n in keep},
            self.metadata,
            self.source_format,
            self.key_styles,
            (),
            self.alpha_source,
            self.path,
            self.embeddings,
            self.layout_family,
        )

    def deltas(self, weights: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """ΔW per layer at strength 1 (``weights``: base weights by module name, needed for DoRA layers)."""
        weights = weights or {}
        return {name: layer.delta(weights.get(name)) for name, layer in self.layers.items()}

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (what ``lorastack inspect`` prints)."""
        probe = self.probe
        return {
            "format": self.source_format,
            "key_styles": list(self.key_styles),
            "family": probe.family,
            "family_candidates": list(probe.candidates),
            "family_evidence": list(probe.evidence),
            "kinds": self.kinds(),
            "ranks": self.ranks(),
            "alphas": self.alphas(),
            "alpha_source": self.alpha_source,
            "modules": self.components(),
            "blocks": self.blocks(),
            "layers": len(self.layers),
            "embeddings": {t: {c: int(v.shape[0]) for c, v in e.items()} for t, e in self.embeddings.items()},
            "parameters": sum(t.numel() for t in self.unique_tensors()),
            "unrecognized_keys": list(self.unrecognized_keys),
        }
