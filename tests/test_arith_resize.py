"""resize: lossless at full rank, the optimal truncation below it, kohya's dynamic criteria on constructed spectra."""

from __future__ import annotations

import pytest
import torch
from arith_helpers import kohya_rank, lora_layers, lycoris_layers, save, targets

from lorastack.adapters import read_adapter
from lorastack.core.arith import ArithmeticInputError, choose_rank, svd_factored
from lorastack.core.arith_runs import Output, run_resize

SPECTRA = [
    torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625]),
    torch.tensor([5.0, 5.0, 5.0, 0.1, 0.1, 0.1]),
    torch.tensor([1.0] * 10),
    torch.tensor([3.0, 1e-3, 1e-4, 0.0]),
]


@pytest.mark.parametrize("S", SPECTRA)
@pytest.mark.parametrize(
    "method,target",
    [
        ("sv_ratio", 2.0),
        ("sv_ratio", 10.0),
        ("sv_fro", 0.9),
        ("sv_fro", 0.99),
        ("sv_cumulative", 0.5),
        ("sv_cumulative", 0.95),
    ],
)
def test_dynamic_ranks_match_kohya(S, method, target):
    for cap in (2, len(S)):
        assert choose_rank(S, cap, method, target) == kohya_rank(S, method, target, cap)


def test_dynamic_ranks_on_a_constructed_layer():
    # a ΔW with known singular values 8, 4, 2, 1, …: sv_ratio 5 keeps σ > 8/5 → 3 values;
    # sv_cumulative 0.9 keeps 4 (Σσ kept: 50%, 75%, 88%, 94%)
    S = SPECTRA[0]
    q1, _ = torch.linalg.qr(torch.randn(32, 8, generator=torch.Generator().manual_seed(0)))
    q2, _ = torch.linalg.qr(torch.randn(24, 8, generator=torch.Generator().manual_seed(1)))
    spec = svd_factored(q1 * S, q2.T)
    torch.testing.assert_close(spec.S, S, rtol=1e-5, atol=1e-5)
    assert choose_rank(spec.S, None, "sv_ratio", 5.0) == 3
    assert choose_rank(spec.S, None, "sv_fro", 0.99) == 3  # Σσ² kept: 75%, 94%, 98.4% ≥ 0.99²
    assert choose_rank(spec.S, None, "sv_cumulative", 0.9) == 4


def test_full_rank_is_lossless_and_lower_is_optimal(tmp_path, tiny_sd1_pipe):
    weights = targets(tiny_sd1_pipe, limit=30)
    src = save(lora_layers(weights, rank=6, alpha=3.0, seed=1), tmp_path / "a.safetensors")
    run_resize(str(src), Output(tmp_path / "full.safetensors"), rank=6)
    full = read_adapter(tmp_path / "full.safetensors")
    original = read_adapter(src)
    for name, layer in original.layers.items():
        torch.testing.assert_close(full.layers[name].delta(), layer.delta(), rtol=1e-4, atol=1e-5)
    data = run_resize(str(src), Output(tmp_path / "r2.safetensors"), rank=2)
    small = read_adapter(tmp_path / "r2.safetensors")
    for report in data["layers"]:
        target = original.layers[report["layer"]].delta().reshape(small.layers[report["layer"]].out_features, -1)
        s = torch.linalg.svdvals(target.double())
        optimal = float(torch.sqrt((s[2:] ** 2).sum()))
        assert report["error"] <= optimal + 1e-4 * float(s[0])
        assert abs(report["fro_retained"] - float(torch.sqrt((s[:2] ** 2).sum() / (s**2).sum()))) < 1e-4
    assert small.ranks() == [2]


def test_dynamic_resize_reports_and_lycoris(tmp_path, tiny_sd1_pipe):
    weights = targets(tiny_sd1_pipe, conv=False, limit=10)
    src = save(lycoris_layers(weights, "lokr", seed=2), tmp_path / "k.safetensors")
    data = run_resize(str(src), Output(tmp_path / "d.safetensors"), dynamic="sv_fro", target=0.9)
    assert data["summary"]["average_fro_retained"] >= 0.9 - 1e-6
    assert all(layer["fro_retained"] >= 0.9 - 1e-6 for layer in data["layers"])
    assert read_adapter(tmp_path / "d.safetensors").kinds() == {"lora": len(weights)}
    with pytest.raises(ArithmeticInputError, match="sv_ratio"):
        run_resize(str(src), Output(tmp_path / "e.safetensors"), dynamic="sv_ratio", target=0.5)
