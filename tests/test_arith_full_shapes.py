"""merge and resize on the layer shapes of the real models: a few modules of the full-size SDXL UNet and FLUX.1-dev
transformer (their shapes read from the shipped configs, built on the meta device; the widest in the slow set),
random LoRA factors of those shapes. Every check is made without forming ΔW: products on probe vectors, and singular
values from the eigenvalues of (UᵀU)(DDᵀ), which share ΔW = U·D's non-zero σ² (independent of the commands' QR
route)."""

from __future__ import annotations

import math

import pytest
import torch

from lorastack.adapters import Adapter, LoRALayer
from lorastack.core.arith import Source, factors
from lorastack.core.merge import merge
from lorastack.core.resize import resize

#: a handful of modules per model: attention (self and cross), a conv, FLUX.1's thin x_embedder; "large" adds the
#: widest (feed-forward and single-block MLP, up to 3072 × 15360: ~2 s each, for ΔW is formed to measure the error)
MODULES = {
    "sdxl": [
        ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"),  # 640 × 2048 (cross-attention)
        ("unet", "mid_block.attentions.0.transformer_blocks.0.attn1.to_q"),  # 1280 × 1280
        ("unet", "down_blocks.0.resnets.0.conv1"),  # 320 × 320 × 3 × 3
    ],
    "flux": [
        ("transformer", "transformer_blocks.0.attn.to_q"),  # 3072 × 3072
        ("transformer", "x_embedder"),  # 3072 × 64
    ],
    "large": [
        ("unet", "down_blocks.2.attentions.0.transformer_blocks.0.ff.net.0.proj"),  # 10240 × 1280
        ("transformer", "single_transformer_blocks.0.proj_mlp"),  # 12288 × 3072
        ("transformer", "single_transformer_blocks.37.proj_out"),  # 3072 × 15360
    ],
}
GROUPS = ["sdxl", "flux", pytest.param("large", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    from lorastack.testing.full_models import build_full_transformer
    from lorastack.testing.models import build_full_unet

    models = {"unet": build_full_unet("sdxl", device="meta"), "transformer": build_full_transformer(device="meta")}
    modules = {prefix: dict(model.named_modules()) for prefix, model in models.items()}
    out = {
        group: {f"{prefix}.{name}": tuple(modules[prefix][name].weight.shape) for prefix, name in names}
        for group, names in MODULES.items()
    }
    assert out["large"]["transformer.single_transformer_blocks.37.proj_out"] == (3072, 15360)
    assert out["sdxl"]["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"] == (640, 2048)
    return out


def _lora(shape, rank, seed) -> LoRALayer:
    g = torch.Generator().manual_seed(seed)
    inner = math.prod(shape[1:])
    down = torch.randn(rank, *shape[1:], generator=g) / math.sqrt(inner)
    up = torch.randn(shape[0], rank, *([1, 1] if len(shape) == 4 else []), generator=g) * 0.05
    return LoRALayer(down, up, alpha=rank / 2)


def _sources(shapes, ranks_weights):
    return [
        Source(f"in{i}", Adapter({n: _lora(s, rank, seed=10 * i + j) for j, (n, s) in enumerate(shapes.items())}), w)
        for i, (rank, w) in enumerate(ranks_weights)
    ]


def _stacked(terms) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, D)`` with ``Σ sign·ΔW = U @ D`` for ``(layer, weight)`` terms, in float64."""
    pairs = [factors(layer, w) for layer, w in terms]
    return torch.cat([u for u, _ in pairs], 1).double(), torch.cat([d for _, d in pairs], 0).double()


def _sigma(U, D) -> torch.Tensor:
    eig = torch.linalg.eigvals((U.T @ U) @ (D @ D.T)).real.clamp_min(0)
    return eig.sort(descending=True).values.sqrt()


def _fro(U, D) -> float:
    return math.sqrt(max(float(torch.trace((U.T @ U) @ (D @ D.T))), 0.0))


@pytest.mark.parametrize("family", GROUPS)
def test_merge_on_full_size_shapes(shapes, family):
    sources = _sources(shapes[family], [(16, 0.8), (8, -0.5)])
    concat = merge(sources, "concat")
    svd = merge(sources, "svd", rank=8)
    reports = {r.name: r for r in svd.reports}
    for name, shape in shapes[family].items():
        target = [(s.adapter.layers[name], s.scale) for s in sources]
        U, D = _stacked(target)
        x = torch.randn(math.prod(shape[1:]), 4, dtype=torch.float64)
        got = concat.layers[name]
        assert got.rank == 24 and got.out_features == shape[0]
        Uc, Dc = _stacked([(got, 1.0)])
        torch.testing.assert_close(Uc @ (Dc @ x), U @ (D @ x), rtol=1e-5, atol=1e-7)  # exact: Σ wᵢ ΔWᵢ
        S = _sigma(U, D)
        norm, optimal = float(S.norm()), float(S[8:].norm())
        Us, Ds = _stacked([(svd.layers[name], 1.0)])
        error = _fro(torch.cat([Us, -U], 1), torch.cat([Ds, D], 0))
        assert svd.layers[name].rank == 8
        assert error <= optimal + 1e-3 * norm  # never worse than the optimal rank-8 truncation
        assert reports[name].optimal_error == pytest.approx(optimal, rel=1e-3, abs=1e-4 * norm)
        assert reports[name].error == pytest.approx(error, rel=1e-2, abs=1e-3 * norm)


@pytest.mark.parametrize("family", GROUPS)
def test_resize_on_full_size_shapes(shapes, family):
    (source,) = _sources(shapes[family], [(16, 1.0)])
    full = resize(source, 16, None, None)
    small = resize(source, 4, None, None)
    reports = {r.name: r for r in small.reports}
    for name, shape in shapes[family].items():
        U, D = _stacked([(source.adapter.layers[name], 1.0)])
        x = torch.randn(math.prod(shape[1:]), 4, dtype=torch.float64)
        Uf, Df = _stacked([(full.layers[name], 1.0)])
        torch.testing.assert_close(Uf @ (Df @ x), U @ (D @ x), rtol=1e-4, atol=1e-6)  # full rank: lossless
        S = _sigma(U, D)
        kept = float(S[:4].norm() / S.norm())
        Ur, Dr = _stacked([(small.layers[name], 1.0)])
        error = _fro(torch.cat([Ur, -U], 1), torch.cat([Dr, D], 0))
        assert small.layers[name].rank == 4 and full.layers[name].rank == 16
        assert error <= float(S[4:].norm()) + 1e-3 * float(S.norm())
        assert reports[name].fro_retained == pytest.approx(kept, abs=1e-4)
