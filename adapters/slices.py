"""One projection's share of a fused module's layer: rows of another layer's delta.

A plain LoRA on a fused module (Flux's ``qkv``, ``linear1``) splits exactly into one LoRA per projection: the
pieces share the down matrix and each keeps its rows of the up matrix. LoKr, LoHa and full-difference layers do not
factor per row, so each projection gets a :class:`RowSliceLayer`: the fused layer itself (``parent``) and the rows
of its delta that are the projection's weight. ``delta()`` is exactly those rows of ``parent.delta()``, and writing
the adapter back in the fused layout writes ``parent``'s own tensors, bit for bit.

``rows`` is a sequence of ``(start, stop)`` ranges of the parent's output rows, concatenated in order: one range
for a q/k/v share, two for a modulation whose shift and scale halves diffusers stores the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import InvalidAdapterError, UnsupportedAdapterError
from .layers import Layer, Shape


@dataclass(eq=False)
class RowSliceLayer(Layer):
    """Rows ``rows`` of ``parent``'s delta; ``source`` names the fused module as the file did."""

    parent: Layer
    rows: tuple[tuple[int, int], ...]
    source: str = field(default="")

    def __post_init__(self) -> None:
        self.rows = tuple((int(a), int(b)) for a, b in self.rows)
        if self.alpha is None:
            self.alpha = self.parent.alpha

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.parent.kind

    @property
    def rank(self) -> int | None:
        return self.parent.rank

    @property
    def scale(self) -> float:
        return self.parent.scale

    @property
    def is_dora(self) -> bool:
        return self.parent.is_dora

    @property
    def out_features(self) -> int:
        return sum(b - a for a, b in self.rows)

    @property
    def in_numel(self) -> int:
        return self.parent.in_numel

    @property
    def natural_shape(self) -> Shape | None:
        shape = self.parent.natural_shape
        return None if shape is None else (self.out_features, *shape[1:])

    @property
    def whole(self) -> bool:
        """The slice is every row of the parent, in order."""
        return self.rows == ((0, self.parent.out_features),)

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.parent.tensors()

    def validate(self, values: bool = True) -> None:
        self.parent.validate(values=values)
        self._validate_shapes()

    def _validate_shapes(self) -> None:
        n = self.parent.out_features
        if not self.rows or any(not 0 <= a < b <= n for a, b in self.rows):
            raise InvalidAdapterError(f"row ranges {self.rows} do not fit a fused layer of {n} output rows")
        dora = self.parent.dora_scale
        if dora is not None and dora.numel() != n:
            # LyCORIS' per-input-column norm runs over all rows of the fused weight, which no one projection has
            raise UnsupportedAdapterError(
                f"{self.source or 'a fused module'}: DoRA with per-input norms on a fused module cannot be applied "
                "per projection; only per-output (wd_on_out) DoRA can"
            )

    def _index(self, device: torch.device) -> torch.Tensor:
        return torch.cat([torch.arange(a, b, device=device) for a, b in self.rows])

    def _parent_rows(self, d: torch.Tensor) -> torch.Tensor:
        flat = d.reshape(self.parent.out_features, -1)
        if len(self.rows) == 1:
            a, b = self.rows[0]
            return flat[a:b]
        return flat.index_select(0, self._index(flat.device))

    def parent_delta(self) -> torch.Tensor:
        """The whole fused delta at strength 1, float32 (what :meth:`rows_of` slices; the projections of one fused
        module can share it)."""
        parent = self.parent
        d = parent._delta_unscaled().float() * parent.scale
        if d.numel() != parent.out_features * parent.in_numel:
            raise InvalidAdapterError(f"{parent.kind} layer of shape {tuple(d.shape)} does not fit its fused module")
        return d

    def rows_of(self, parent_delta: torch.Tensor) -> torch.Tensor:
        """This projection's rows of :meth:`parent_delta`, as an ``out × in…`` matrix."""
        return self._parent_rows(parent_delta)

    def _scaled_delta(self) -> torch.Tensor:
        return self._parent_rows(self.parent_delta())

    def _magnitude(self) -> torch.Tensor | None:
        dora = self.parent.dora_scale
        return None if dora is None else self._parent_rows(dora.float().reshape(-1, 1)).reshape(-1)

    def bias_delta(self) -> torch.Tensor | None:
        b = self.parent.bias_delta()
        return None if b is None else self._parent_rows(b.reshape(-1, 1)).reshape(-1)

    def to(self, *args, **kwargs) -> RowSliceLayer:
        return RowSliceLayer(self.parent.to(*args, **kwargs), self.rows, self.source, alpha=self.alpha)

    def nbytes(self) -> int:
        return self.parent.nbytes()
