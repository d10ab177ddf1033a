"""Layer records: one per target module, each able to compute its weight delta ΔW.

Every format lorastack reads ends up as one of these records. The alpha/rank scaling is applied in exactly one
place, :meth:`Layer.delta`, so a LoRA at strength ``s`` always patches ``W + s * layer.delta(W)``.

Formulas (shapes are ``out × in × k…``):

* LoRA / LoCon: ``ΔW = (alpha / r) · up @ down``; with a Tucker core (LyCORIS ``lora_mid``) the core sits between.
* LoHa: ``ΔW = (alpha / r) · (w1_a @ w1_b) ⊙ (w2_a @ w2_b)``, optionally with Tucker cores ``t1``/``t2``.
* LoKr: ``ΔW = scale · kron(w1, w2)`` where each factor is full or a product ``a @ b``; ``scale = alpha / r``
  when a factor is decomposed (r = the rank of the decomposed factor), else 1.
* Full: ``ΔW = diff`` (LyCORIS "full").
* DoRA (``dora_scale`` / peft ``lora_magnitude_vector`` on any of the above):
  ``ΔW = m · (W + ΔW₀) / ‖W + ΔW₀‖ − W``, the norm taken per output row when ``m`` has one value per output,
  per input column otherwise (LyCORIS ``wd_on_out``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import ClassVar

import torch

from .errors import InvalidAdapterError

Shape = tuple[int, ...]


def _check(cond: bool, problem: str) -> None:
    if not cond:
        raise InvalidAdapterError(problem)


#: dtypes ``torch.isfinite`` handles on every device; others (fp8) are checked upcast to float32.
_NATIVE_FINITE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FINITE_CHUNK = 1 << 20


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or infinity in ``t``. fp8 tensors (which ``isfinite`` does not take on CPU) are upcast a chunk at a
    time, so the check needs no copy of the whole tensor."""
    if t.dtype in _NATIVE_FINITE:
        return bool(torch.isfinite(t).all())
    flat = t.reshape(-1)
    return all(
        bool(torch.isfinite(flat[i : i + _FINITE_CHUNK].float()).all()) for i in range(0, flat.numel(), _FINITE_CHUNK)
    )


@dataclass(eq=False)
class Layer:
    """Base class of the layer records. Subclasses declare their tensors as dataclass fields."""

    kind: ClassVar[str] = "layer"
    alpha: float | None = field(default=None, kw_only=True)
    dora_scale: torch.Tensor | None = field(default=None, kw_only=True)

    # --- what subclasses provide ---------------------------------------------------------------------------------
    @property
    def rank(self) -> int | None:
        """The decomposition rank, or ``None`` for a full-rank delta."""
        return None

    @property
    def out_features(self) -> int:
        raise NotImplementedError

    @property
    def in_numel(self) -> int:
        """Number of inputs per output (``in_features × prod(kernel)``)."""
        raise NotImplementedError

    @property
    def natural_shape(self) -> Shape | None:
        """The weight shape the tensors imply, or ``None`` when the kernel size was flattened away."""
        raise NotImplementedError

    def _delta_unscaled(self) -> torch.Tensor:
        raise NotImplementedError

    def _validate_shapes(self) -> None:
        raise NotImplementedError

    # --- shared behaviour ----------------------------------------------------------------------------------------
    @property
    def scale(self) -> float:
        """``alpha / rank``: the factor applied once to the raw product. 1 when no alpha is stored."""
        if self.alpha is None or not self.rank:
            return 1.0
        return float(self.alpha) / self.rank

    @property
    def is_dora(self) -> bool:
        return self.dora_scale is not None

    @property
    def kind_label(self) -> str:
        """Kind for display: ``lora``, ``locon``, ``loha``, ``lokr`` or ``full``, with ``+dora`` when decomposed."""
        return self.kind + ("+dora" if self.is_dora else "")

    @property
    def in_features(self) -> int | None:
        shape = self.natural_shape
        return shape[1] if shape is not None else None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The record's tensors by field name (only those present)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                out[f.name] = value
        return out

    def validate(self, values: bool = True) -> None:
        """Raise :class:`InvalidAdapterError` unless shapes, dtypes and (with ``values``) the numbers are sound."""
        for name, t in self.tensors().items():
            _check(t.is_floating_point(), f"{name} has dtype {t.dtype}; adapter weights must be floating point")
            _check(t.numel() > 0, f"{name} has shape {tuple(t.shape)}, which holds no values")
            if values:
                _check(all_finite(t), f"{name} holds NaN or infinite values")
        if self.alpha is not None:
            _check(math.isfinite(self.alpha), f"alpha is {self.alpha}")
        self._validate_shapes()
        if self.dora_scale is not None:
            _check(
                self.dora_scale.numel() in (self.out_features, self.in_numel) or self.natural_shape is None,
                f"dora_scale has shape {tuple(self.dora_scale.shape)}, which fits neither the outputs "
                f"({self.out_features}) nor the inputs of the layer",
            )

    def delta(self, weight: torch.Tensor | None = None, shape: Shape | None = None) -> torch.Tensor:
        """ΔW at strength 1, in float32, shaped like ``weight`` (or ``shape``, or the natural shape).

        DoRA layers need the base ``weight``: their delta depends on it.
        """
        target = tuple(weight.shape) if weight is not None else (tuple(shape) if shape is not None else None)
        d = self._scaled_delta()
        if target is None:
            target = self.natural_shape or tuple(d.shape)
        if d.numel() != math.prod(target):
            raise InvalidAdapterError(
                f"{self.kind} layer of shape {tuple(d.shape)} does not fit a weight of shape {target}"
            )
        d = d.reshape(target)
        magnitude = self._magnitude()
        if magnitude is None:
            return d
        if weight is None:
            raise ValueError("a DoRA layer's delta depends on the base weight; pass weight=")
        return _dora(weight.float(), d, magnitude) - weight.float()

    def _scaled_delta(self) -> torch.Tensor:
        """ΔW at strength 1 in float32, before it is shaped like the weight (a fused layer's slice: its rows)."""
        return self._delta_unscaled().float() * self.scale

    def _magnitude(self) -> torch.Tensor | None:
        """The DoRA magnitude applied to this layer's delta, float32 (``None``: not DoRA)."""
        return None if self.dora_scale is None else self.dora_scale.float()

    def bias_delta(self) -> torch.Tensor | None:
        """Δbias at strength 1 (only full-difference layers carry one)."""
        return None

    def to(self, *args, **kwargs) -> Layer:
        """A copy with every tensor moved/cast like ``Tensor.to``."""
        changes = {name: t.to(*args, **kwargs) for name, t in self.tensors().items()}
        return type(self)(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


def _dora(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    merged = weight + delta
    out_ch = merged.shape[0]
    if magnitude.numel() == out_ch and (magnitude.ndim == 1 or magnitude.shape[0] == out_ch):
        # norm per output row (peft DoRA, LyCORIS wd_on_out=True)
        norm = merged.reshape(out_ch, -1).norm(dim=1).reshape(out_ch, *[1] * (merged.ndim - 1))
        mag = magnitude.reshape(norm.shape)
    else:
        # norm per input column (LyCORIS default, the layout ComfyUI reads)
        in_ch = merged.shape[1]
        norm = merged.transpose(0, 1).reshape(in_ch, -1).norm(dim=1).reshape(1, in_ch, *[1] * (merged.ndim - 2))
        mag = magnitude.reshape(norm.shape)
    return merged * (mag / norm)


def _tucker(core: torch.Tensor, up2d: torch.Tensor, down2d: torch.Tensor) -> torch.Tensor:
    """Rebuild ``out × in × k…`` from a Tucker core ``r_up × r_down × k…`` and its two 2-D factors."""
    return torch.einsum("m n ..., i m, n j -> i j ...", core, up2d, down2d)


@dataclass(eq=False)
class LoRALayer(Layer):
    """LoRA (linear) or LoCon (conv) with an optional Tucker core (LyCORIS ``lora_mid``)."""

    down: torch.Tensor
    up: torch.Tensor
    mid: torch.Tensor | None = None

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "locon" if self.down.ndim == 4 and (self.mid is not None or self.down.shape[2:] != (1, 1)) else "lora"

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.up.shape[0])

    @property
    def in_numel(self) -> int:
        kernel = self.mid.shape[2:] if self.mid is not None else self.down.shape[2:]
        return int(self.down.shape[1]) * math.prod(kernel)

    @property
    def natural_shape(self) -> Shape:
        if self.down.ndim == 2:
            return (self.out_features, int(self.down.shape[1]))
        kernel = self.mid.shape[2:] if self.mid is not None else self.down.shape[2:]
        return (self.out_features, int(self.down.shape[1]), *map(int, kernel))

    def _validate_shapes(self) -> None:
        d, u = self.down, self.up
        _check(d.ndim in (2, 4), f"lora_down has shape {tuple(d.shape)}; expected 2 or 4 dimensions")
        _check(u.ndim == d.ndim, f"lora_up has shape {tuple(u.shape)} but lora_down has {tuple(d.shape)}")
        if u.ndim == 4:
            _check(u.shape[2:] == (1, 1), f"lora_up has a {tuple(u.shape[2:])} kernel; expected 1x1")
        _check(min(d.shape) > 0 and min(u.shape) > 0, "a LoRA tensor has a zero-sized dimension")
        if self.mid is None:
            _check(
                u.shape[1] == d.shape[0],
                f"rank mismatch: lora_up {tuple(u.shape)} and lora_down {tuple(d.shape)}",
            )
        else:
            m = self.mid
            _check(d.ndim == 4 and m.ndim == 4, f"lora_mid has shape {tuple(m.shape)}; expected a 4-D core")
            _check(
                m.shape[0] == u.shape[1] and m.shape[1] == d.shape[0] and d.shape[2:] == (1, 1),
                f"lora_mid {tuple(m.shape)} does not fit lora_up {tuple(u.shape)} and lora_down {tuple(d.shape)}",
            )

    def _delta_unscaled(self) -> torch.Tensor:
        up2d = self.up.float().flatten(1)
        if self.mid is not None:
            return _tucker(self.mid.float(), up2d, self.down.float().flatten(1))
        return up2d @ self.down.float().flatten(1)


@dataclass(eq=False)
class LoHaLayer(Layer):
    """LyCORIS LoHa: Hadamard product of two low-rank products, optionally with Tucker cores."""

    kind: ClassVar[str] = "loha"
    w1_a: torch.Tensor
    w1_b: torch.Tensor
    w2_a: torch.Tensor
    w2_b: torch.Tensor
    t1: torch.Tensor | None = None
    t2: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.w1_b.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.w1_a.shape[1] if self.t1 is not None else self.w1_a.shape[0])

    @property
    def in_numel(self) -> int:
        if self.t1 is not None:
            return int(self.w1_b.shape[1]) * math.prod(self.t1.shape[2:])
        return int(self.w1_b.shape[1])

    @property
    def natural_shape(self) -> Shape | None:
        if self.t1 is not None:
            return (self.out_features, int(self.w1_b.shape[1]), *map(int, self.t1.shape[2:]))
        return None  # conv kernels are flattened into w1_b; the target module decides

    def _validate_shapes(self) -> None:
        for name in ("w1_a", "w1_b", "w2_a", "w2_b"):
            t = getattr(self, name)
            _check(t.ndim == 2 and min(t.shape) > 0, f"hada_{name} has shape {tuple(t.shape)}; expected a matrix")
        _check((self.t1 is None) == (self.t2 is None), "hada_t1 and hada_t2 must both be present or both absent")
        if self.t1 is None:
            _check(
                self.w1_a.shape[1] == self.w1_b.shape[0] and self.w2_a.shape[1] == self.w2_b.shape[0],
                "hada_w*_a and hada_w*_b ranks differ",
            )
            _check(
                self.w1_a.shape[0] == self.w2_a.shape[0] and self.w1_b.shape[1] == self.w2_b.shape[1],
                f"the two LoHa products have different shapes ({tuple(self.w1_a.shape)}x{tuple(self.w1_b.shape)} "
                f"vs {tuple(self.w2_a.shape)}x{tuple(self.w2_b.shape)})",
            )
        else:
            for t, a, b, n in ((self.t1, self.w1_a, self.w1_b, 1), (self.t2, self.w2_a, self.w2_b, 2)):
                _check(
                    t.ndim == 4 and t.shape[0] == a.shape[0] and t.shape[1] == b.shape[0],
                    f"hada_t{n} {tuple(t.shape)} does not fit hada_w{n}_a {tuple(a.shape)} / _b {tuple(b.shape)}",
                )
            _check(
                self.w1_a.shape[1] == self.w2_a.shape[1] and self.w1_b.shape[1] == self.w2_b.shape[1],
                "the two LoHa Tucker products have different shapes",
            )

    def _delta_unscaled(self) -> torch.Tensor:
        if self.t1 is not None:
            m1 = torch.einsum("i j ..., j r, i p -> p r ...", self.t1.float(), self.w1_b.float(), self.w1_a.float())
            m2 = torch.einsum("i j ..., j r, i p -> p r ...", self.t2.float(), self.w2_b.float(), self.w2_a.float())
            return m1 * m2
        return (self.w1_a.float() @ self.w1_b.float()) * (self.w2_a.float() @ self.w2_b.float())


@dataclass(eq=False)
class LoKrLayer(Layer):
    """LyCORIS LoKr: Kronecker product of two factors, each full (``w1``) or decomposed (``w1_a @ w1_b``)."""

    kind: ClassVar[str] = "lokr"
    w1: torch.Tensor | None = None
    w1_a: torch.Tensor | None = None
    w1_b: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    w2_a: torch.Tensor | None = None
    w2_b: torch.Tensor | None = None
    t2: torch.Tensor | None = None

    @property
    def rank(self) -> int | None:
        # LyCORIS scales by alpha / the rank of the decomposed factor (w2 wins when both are decomposed).
        if self.w2_b is not None:
            return int(self.w2_b.shape[0])
        if self.w1_b is not None:
            return int(self.w1_b.shape[0])
        return None

    def _factor1_shape(self) -> Shape:
        if self.w1 is not None:
            return tuple(self.w1.shape)
        return (int(self.w1_a.shape[0]), int(self.w1_b.shape[1]))

    def _factor2_shape(self) -> Shape:
        if self.w2 is not None:
            return tuple(self.w2.shape)
        if self.t2 is not None:
            return (int(self.w2_a.shape[1]), int(self.w2_b.shape[1]), *map(int, self.t2.shape[2:]))
        return (int(self.w2_a.shape[0]), int(self.w2_b.shape[1]))

    @property
    def out_features(self) -> int:
        return self._factor1_shape()[0] * self._factor2_shape()[0]

    @property
    def in_numel(self) -> int:
        f1, f2 = self._factor1_shape(), self._factor2_shape()
        return f1[1] * math.prod(f2[1:])

    @property
    def natural_shape(self) -> Shape | None:
        f1, f2 = self._factor1_shape(), self._factor2_shape()
        return (f1[0] * f2[0], f1[1] * f2[1], *f2[2:]) if len(f2) == 4 else (f1[0] * f2[0], f1[1] * f2[1])

    def _validate_shapes(self) -> None:
        _check(
            (self.w1 is not None) != (self.w1_a is not None and self.w1_b is not None),
            "LoKr needs either lokr_w1 or both lokr_w1_a and lokr_w1_b",
        )
        _check(
            (self.w2 is not None) != (self.w2_a is not None and self.w2_b is not None),
            "LoKr needs either lokr_w2 or both lokr_w2_a and lokr_w2_b",
        )
        if self.w1 is None:
            _check(
                self.w1_a.ndim == 2 and self.w1_b.ndim == 2 and self.w1_a.shape[1] == self.w1_b.shape[0],
                f"lokr_w1_a {tuple(self.w1_a.shape)} and lokr_w1_b {tuple(self.w1_b.shape)} do not multiply",
            )
        else:
            _check(self.w1.ndim == 2, f"lokr_w1 has shape {tuple(self.w1.shape)}; expected a matrix")
        if self.w2 is None:
            if self.t2 is None:
                ok = self.w2_a.ndim == 2 and self.w2_b.ndim == 2 and self.w2_a.shape[1] == self.w2_b.shape[0]
            else:
                ok = (
                    self.t2.ndim == 4
                    and self.w2_a.ndim == 2
                    and self.w2_b.ndim == 2
                    and self.t2.shape[0] == self.w2_a.shape[0]
                    and self.t2.shape[1] == self.w2_b.shape[0]
                )
            _check(ok, "lokr_w2_a / lokr_w2_b / lokr_t2 shapes do not fit together")
        else:
            _check(self.w2.ndim in (2, 4), f"lokr_w2 has shape {tuple(self.w2.shape)}; expected 2 or 4 dimensions")
        _check(all(s > 0 for s in (*self._factor1_shape(), *self._factor2_shape())), "a LoKr factor is empty")

    def _delta_unscaled(self) -> torch.Tensor:
        w1 = self.w1.float() if self.w1 is not None else self.w1_a.float() @ self.w1_b.float()
        if self.w2 is not None:
            w2 = self.w2.float()
        elif self.t2 is not None:
            w2 = torch.einsum("i j k l, j r, i p -> p r k l", self.t2.float(), self.w2_b.float(), self.w2_a.float())
        else:
            w2 = self.w2_a.float() @ self.w2_b.float()
        if w2.ndim == 4:
            w1 = w1[:, :, None, None]
        return torch.kron(w1.contiguous(), w2.contiguous())


@dataclass(eq=False)
class FullLayer(Layer):
    """A stored full weight difference (LyCORIS ``diff``), with an optional bias difference."""

    kind: ClassVar[str] = "full"
    diff: torch.Tensor
    diff_b: torch.Tensor | None = None

    @property
    def out_features(self) -> int:
        return int(self.diff.shape[0])

    @property
    def in_numel(self) -> int:
        return int(math.prod(self.diff.shape[1:]))

    @property
    def natural_shape(self) -> Shape:
        return tuple(int(s) for s in self.diff.shape)

    def _validate_shapes(self) -> None:
        _check(self.diff.ndim in (2, 4), f"diff has shape {tuple(self.diff.shape)}; expected 2 or 4 dimensions")
        if self.diff_b is not None:
            _check(
                self.diff_b.shape == (self.diff.shape[0],),
                f"diff_b has shape {tuple(self.diff_b.shape)}; expected ({self.diff.shape[0]},)",
            )

    def _delta_unscaled(self) -> torch.Tensor:
        return self.diff.float()

    def bias_delta(self) -> torch.Tensor | None:
        return None if self.diff_b is None else self.diff_b.float()
