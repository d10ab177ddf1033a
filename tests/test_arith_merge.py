"""merge: concat is the weighted sum exactly, svd is the optimal truncation, ties/dare go through peft, LyCORIS and
DoRA inputs through their full ΔW; every result file carries its record."""

from __future__ import annotations

import json
import math

import pytest
import torch
from arith_helpers import lora_layers, lycoris_layers, save, targets
from safetensors import safe_open

from lorastack.adapters import read_adapter
from lorastack.core.arith import RECORD_KEY, ArithmeticInputError, load_sources
from lorastack.core.arith_runs import Output, run_merge
from lorastack.core.merge import merge


@pytest.fixture(scope="module")
def two(tmp_path_factory, tiny_sd1_dir):
    """Two adapters on 30 modules, made once for the module (the tests only read them)."""
    from lorastack.testing.models import load_pipeline

    folder = tmp_path_factory.mktemp("two")
    weights = targets(load_pipeline(tiny_sd1_dir), limit=30)
    a = save(lora_layers(weights, rank=4, alpha=2.0, seed=1), folder / "a.safetensors")
    b = save(lora_layers(weights, rank=3, alpha=6.0, seed=2), folder / "b.safetensors", fmt="diffusers")
    return a, b, weights


def _sum(paths_weights):
    total = {}
    for path, w in paths_weights:
        for name, layer in read_adapter(path).layers.items():
            d = layer.delta().reshape(layer.out_features, -1) * w
            total[name] = total[name] + d if name in total else d
    return total


def test_concat_equals_weighted_sum(two, tmp_path):
    a, b, _ = two
    data = run_merge([f"{a}:0.8", f"{b}:-0.5"], Output(tmp_path / "m.safetensors"), "concat")
    merged = read_adapter(tmp_path / "m.safetensors")
    expected = _sum([(a, 0.8), (b, -0.5)])
    assert set(merged.layers) == set(expected)
    for name, layer in merged.layers.items():
        got = layer.delta().reshape(layer.out_features, -1)
        torch.testing.assert_close(got, expected[name], rtol=1e-5, atol=1e-6)
        assert layer.rank in (7, None)  # ranks add up (a full difference where 7 exceeds the layer)
    assert data["summary"]["relative_error"] < 1e-6
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        record = json.loads(f.metadata()[RECORD_KEY])
    assert record["method"] == "concat" and len(record["sources"]) == 2
    assert all(len(s["sha256"]) == 64 for s in record["sources"])
    assert record["summary"]["layers"] == len(expected)


def test_svd_error_is_the_optimal_truncation(two):
    a, b, _ = two
    sources = load_sources([f"{a}:1.0", f"{b}:0.7"])
    result = merge(sources, "svd", rank=2)
    expected = _sum([(a, 1.0), (b, 0.7)])
    for report in result.reports:
        s = torch.linalg.svdvals(expected[report.name].double())
        optimal = math.sqrt(float((s[2:] ** 2).sum()))
        got = result.layers[report.name].delta().reshape(expected[report.name].shape)
        measured = float(torch.linalg.matrix_norm((got - expected[report.name]).double()))
        scale = float(torch.linalg.matrix_norm(expected[report.name]))
        assert measured <= optimal + 1e-4 * scale  # never worse than the optimum, within float tolerance
        assert abs(report.error - measured) <= 1e-4 * scale
        assert abs(report.optimal_error - optimal) <= 1e-4 * scale
        assert result.layers[report.name].rank == min(2, len(s))


def test_ties_and_dare_use_peft(two):
    from peft.utils.merge_utils import ties

    a, b, _ = two
    sources = load_sources([str(a), f"{b}:0.5"])
    result = merge(sources, "ties", rank=64, density=0.5)
    name = result.reports[0].name
    tasks = [s.adapter.layers[name].delta().reshape(result.layers[name].out_features, -1) for s in sources]
    expected = ties(tasks, torch.tensor([1.0, 0.5]), 0.5)
    got = result.layers[name].delta().reshape(expected.shape)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)  # rank 64 holds the whole tiny layer
    one = merge(sources, "dare", rank=2, density=0.5, seed=3)
    again = merge(sources, "dare", rank=2, density=0.5, seed=3)
    assert torch.equal(one.layers[name].up, again.layers[name].up)


def _first_layer_tasks(sources, result):
    name = result.reports[0].name
    shape = (result.layers[name].out_features, -1)
    return name, [s.adapter.layers[name].delta().reshape(shape) for s in sources]


def test_magnitude_prune_is_peft_s(two):
    from peft.utils.merge_utils import magnitude_prune

    a, b, _ = two
    sources = load_sources([f"{a}:0.6", f"{b}:1.2"])
    result = merge(sources, "magnitude_prune", rank=64, density=0.3)
    name, tasks = _first_layer_tasks(sources, result)
    expected = magnitude_prune(tasks, torch.tensor([0.6, 1.2]), 0.3)
    got = result.layers[name].delta().reshape(expected.shape)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    plain_sum = 0.6 * tasks[0] + 1.2 * tasks[1]
    assert float((got - plain_sum).norm()) > 0.1 * float(plain_sum.norm())  # pruning 70 % changes the sum


def test_dare_ties_is_peft_s_with_the_seeded_masks(two):
    from peft.utils.merge_utils import dare_ties

    a, b, _ = two
    sources = load_sources([str(a), f"{b}:0.5"])
    result = merge(sources, "dare_ties", rank=64, density=0.5, seed=11)
    name, tasks = _first_layer_tasks(sources, result)
    # the first layer's masks: peft's global generator seeded from the --seed's generator's first draw
    first = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(11)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(first)
        expected = dare_ties(tasks, torch.tensor([1.0, 0.5]), 0.5)
    got = result.layers[name].delta().reshape(expected.shape)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    other = merge(sources, "dare_ties", rank=64, density=0.5, seed=12)
    assert not torch.allclose(other.layers[name].delta().reshape(expected.shape), expected, atol=1e-3)
    assert result.settings["seed"] == 11 and result.reports[0].kind == "lora (dare_ties)"


def test_lycoris_and_dora_merge_through_full_delta(tmp_path, tiny_sd1_pipe, tiny_sd1_dir):
    weights = targets(tiny_sd1_pipe, conv=False, limit=12)
    loha = save(lycoris_layers(weights, "loha", seed=4), tmp_path / "loha.safetensors")
    lokr = save(lycoris_layers(weights, "lokr", seed=5), tmp_path / "lokr.safetensors")
    dora = save(lora_layers(weights, seed=6, dora=True), tmp_path / "dora.safetensors")
    with pytest.raises(ArithmeticInputError, match="DoRA"):
        run_merge([str(dora)], Output(tmp_path / "x.safetensors"))
    data = run_merge(
        [f"{loha}:0.5", str(lokr), f"{dora}:0.7"], Output(tmp_path / "m.safetensors", base=str(tiny_sd1_dir))
    )
    merged = read_adapter(tmp_path / "m.safetensors")
    for name, w in weights.items():
        expected = (
            read_adapter(loha).layers[name].delta() * 0.5
            + read_adapter(lokr).layers[name].delta()
            + read_adapter(dora).layers[name].delta(w) * 0.7
        )
        torch.testing.assert_close(merged.layers[name].delta(shape=w.shape), expected, rtol=1e-5, atol=1e-5)
    assert data["summary"]["full_layers"] == len(weights) and data["format"] == "kohya"


def test_refusals(two, tmp_path):
    a, b, _ = two
    xl_shapes = {  # SDXL's own: its second text encoder, its 2048-wide cross-attention
        "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj": torch.empty(1280, 1280),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": torch.empty(640, 2048),
    }
    xl = save(lora_layers(xl_shapes), tmp_path / "xl.safetensors", family="sdxl")
    with pytest.raises(ArithmeticInputError, match="different base families"):
        run_merge([str(a), str(xl)], Output(tmp_path / "m.safetensors"))
    with pytest.raises(ArithmeticInputError, match="density"):
        run_merge([str(a), str(b)], Output(tmp_path / "m.safetensors"), "ties")
    with pytest.raises(ArithmeticInputError, match="rank 0 is out of range|--rank 0"):
        run_merge([str(a), str(b)], Output(tmp_path / "m.safetensors"), "svd", rank=0)
    assert not (tmp_path / "m.safetensors").exists()
