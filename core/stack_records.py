"""What the stack keeps per adapter: how its layers matched the base (:class:`LoadReport`), the layers on the
device (:class:`LoadedAdapter`), and the move onto the device that keeps shared tensors shared."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from lorastack.adapters import Adapter, Layer
from lorastack.adapters.families import transformer_block
from lorastack.adapters.files import file_and_tensor_sha256
from lorastack.adapters.slices import RowSliceLayer


@dataclass
class LoadReport:
    """How an adapter's layers matched the base's modules."""

    name: str
    source: str
    family: str
    matched: list[str]
    unmatched: dict[str, str]
    unrecognized_keys: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.unmatched and not self.unrecognized_keys

    def summary(self) -> str:
        total = len(self.matched) + len(self.unmatched)
        text = f"adapter '{self.name}' ({self.source}): {len(self.matched)} of {total} layers matched the base"
        if self.unmatched:
            first, reason = next(iter(self.unmatched.items()))
            text += f"; {len(self.unmatched)} did not (e.g. {first}: {reason})"
        if self.unrecognized_keys:
            text += f"; {len(self.unrecognized_keys)} keys were not understood (e.g. {self.unrecognized_keys[0]})"
        return text


@dataclass
class LoadedAdapter:
    """An adapter ready on the device: its matched layers, metadata and provenance."""

    name: str
    adapter: Adapter
    layers: dict[str, Layer]
    report: LoadReport
    source: str
    _hashes: tuple[str, str] | None = None
    tokens: list = field(default_factory=list)  # (component, token names) added to the pipeline
    #: The trigger words its source gave (a registry version's, set at ``import --trigger``); ``None``: the file's.
    given_trigger_words: list[str] | None = None

    @property
    def trigger_words(self) -> list[str]:
        if self.given_trigger_words is not None:
            return list(self.given_trigger_words)
        return list(self.adapter.metadata.trigger_words)

    def blocks(self, family: str) -> set[tuple[str, int]]:
        """The transformer blocks (``("double", 3)``) the adapter's matched layers are in."""
        found = (transformer_block(family, m.partition(".")[2]) for m in self.layers if m.startswith("transformer."))
        return {b for b in found if b is not None}

    @property
    def tensor_sha256(self) -> str | None:
        """sha256 of the file's tensor data (``None`` for adapters given as objects)."""
        if self._hashes is None and self.adapter.path is not None:
            self._hashes = file_and_tensor_sha256(self.adapter.path)
        return self._hashes[1] if self._hashes else None


def _moved(layers: dict[str, Layer], device: torch.device) -> dict[str, Layer]:
    """The layers in float32 on ``device``, keeping what they share shared: the pieces of a fused LoRA hold one
    down matrix, and the slices of a fused LoKr one parent (``Layer.to`` would copy them once per projection)."""
    tensors: dict[int, torch.Tensor] = {}
    parents: dict[int, Layer] = {}

    def move(layer: Layer) -> Layer:
        if isinstance(layer, RowSliceLayer):
            key = id(layer.parent)
            if key not in parents:
                parents[key] = move(layer.parent)
            return RowSliceLayer(parents[key], layer.rows, layer.source, alpha=layer.alpha)
        changes = {}
        for name, t in layer.tensors().items():
            if id(t) not in tensors:
                tensors[id(t)] = t.to(device, torch.float32)
            changes[name] = tensors[id(t)]
        return dataclasses.replace(layer, **changes)

    return {m: move(layer) for m, layer in layers.items()}
