"""Truncated SVDs of LoRA factors and kohya's rank criteria, shared by every arithmetic command (see :mod:`.arith`).

A LoRA's ΔW = U·D (``out × r`` times ``r × in``) is factored without forming it: with ``U = Q₁R₁`` and
``Dᵀ = Q₂R₂`` (QR), ΔW = Q₁ (R₁R₂ᵀ) Q₂ᵀ, so the SVD of the small ``r × r`` core gives ΔW's singular values and
vectors exactly. The criteria follow kohya-ss/sd-scripts ``networks/resize_lora.py`` to the letter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


# --- SVD -------------------------------------------------------------------------------------------------------
@dataclass
class Spectrum:
    """A ΔW as ``U · diag(S) · Vh`` (S descending), exact for the matrix it was computed from."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor


def svd_dense(matrix: torch.Tensor) -> Spectrum:
    U, S, Vh = torch.linalg.svd(matrix.float(), full_matrices=False)
    return Spectrum(U, S, Vh)


def svd_factored(up: torch.Tensor, down: torch.Tensor) -> Spectrum:
    """The SVD of ``up @ down`` without forming it (see the module docstring)."""
    q1, r1 = torch.linalg.qr(up.float())
    q2, r2 = torch.linalg.qr(down.float().T)
    u, s, vh = torch.linalg.svd(r1 @ r2.T, full_matrices=False)
    return Spectrum(q1 @ u, s, vh @ q2.T)


def spectrum_of(ups: list[torch.Tensor], downs: list[torch.Tensor], dense_part: torch.Tensor | None) -> Spectrum:
    """The SVD of ``Σ upᵢ @ downᵢ (+ dense_part)``: factored while the stacked rank is below the matrix's size."""
    if dense_part is None and ups:
        up, down = torch.cat(ups, 1), torch.cat(downs, 0)
        if up.shape[1] < min(up.shape[0], down.shape[1]):
            return svd_factored(up, down)
        return svd_dense(up @ down)
    total = dense_part.clone() if dense_part is not None else None
    for up, down in zip(ups, downs, strict=True):
        total = up @ down if total is None else total.addmm_(up, down)
    return svd_dense(total)


# --- kohya's criteria --------------------------------------------------------------------------------------------
def index_sv_cumulative(S: torch.Tensor, target: float) -> int:
    cumulative = torch.cumsum(S, dim=0) / float(torch.sum(S))
    return max(0, min(int(torch.searchsorted(cumulative, target)), len(S) - 1))


def index_sv_fro(S: torch.Tensor, target: float) -> int:
    squared = S.pow(2)
    cumulative = torch.cumsum(squared, dim=0) / float(torch.sum(squared))
    return max(0, min(int(torch.searchsorted(cumulative, target**2)), len(S) - 1))


def index_sv_ratio(S: torch.Tensor, target: float) -> int:
    return max(0, min(int(torch.sum(S[0] / target < S).item()) - 1, len(S) - 1))


_INDEX = {"sv_ratio": index_sv_ratio, "sv_fro": index_sv_fro, "sv_cumulative": index_sv_cumulative}
