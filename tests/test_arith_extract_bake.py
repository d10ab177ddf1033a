"""extract recovers a known rank-r change; bake then generate equals the stack on the base (CPU, fp32)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from arith_helpers import kohya_rank, lora_layers, save, targets
from click.testing import CliRunner

from lorastack.adapters import read_adapter
from lorastack.cli.main import cli
from lorastack.core.arith_runs import Output, run_bake, run_extract
from lorastack.core.generate import GenerateOptions, Generator
from lorastack.testing.models import build_tiny_pipeline, load_pipeline
from lorastack.testing.single_file import save_single_file


def test_extract_recovers_a_known_rank_r_change(tmp_path, tiny_sd1_dir):
    tuned_pipe = load_pipeline(tiny_sd1_dir)
    weights = targets(tuned_pipe, limit=25)
    known = lora_layers(weights, rank=3, alpha=3.0, seed=7, std=0.2)
    with torch.no_grad():
        for name, layer in known.items():
            weights[name].add_(layer.delta(shape=weights[name].shape))
        # what a LoRA cannot hold: a bias and a norm change, reported with their size
        tuned_pipe.unet.conv_in.bias.add_(0.5)
        norm = dict(tuned_pipe.text_encoder.named_parameters())["final_layer_norm.weight"]
        norm.mul_(1.1)
        expected_left = math.sqrt(
            (0.5**2) * tuned_pipe.unet.conv_in.bias.numel() + float((norm - norm / 1.1).norm()) ** 2
        )
    tuned_pipe.save_pretrained(tmp_path / "tuned")
    data = run_extract(str(tiny_sd1_dir), str(tmp_path / "tuned"), Output(tmp_path / "x.safetensors"), rank=4)
    left = data["summary"]["left_out"]["not_a_lora"]
    assert left["tensors"] == 2 and abs(left["norm"] - expected_left) < 1e-4 * expected_left
    assert left["largest"] in ("unet.conv_in.bias", "text_encoder.final_layer_norm.weight")
    extracted = read_adapter(tmp_path / "x.safetensors")
    assert set(extracted.layers) == set(known)
    for name, layer in known.items():
        torch.testing.assert_close(extracted.layers[name].delta(shape=weights[name].shape),
                                   layer.delta(shape=weights[name].shape), rtol=1e-3, atol=1e-4)  # fmt: skip
    assert data["summary"]["max_layer_relative_error"] < 1e-4
    # the other settings on the models in memory (the file route is the one above)
    from lorastack.core.extract import extract

    base_pipe = load_pipeline(tiny_sd1_dir)
    low = extract(base_pipe, tuned_pipe, rank=1).summary()
    assert low["relative_error"] > 0.1  # below r the error is real and reported
    clamped = extract(base_pipe, tuned_pipe, rank=3, clamp_quantile=0.9)
    name = clamped.reports[0].name
    diff = (weights[name].float() - base_pipe.unet.state_dict()[name[5:] + ".weight"]).flatten(1)
    U, S, Vh = torch.linalg.svd(diff, full_matrices=False)  # kohya's extract_lora_from_models.py, written out
    up, down = U[:, :3] @ torch.diag(S[:3]), Vh[:3]
    hi = torch.quantile(torch.cat([up.flatten(), down.flatten()]), 0.9)
    kohya = up.clamp(-hi, hi) @ down.clamp(-hi, hi)
    mine = clamped.layers[name].delta().reshape(kohya.shape)
    torch.testing.assert_close(mine, kohya, rtol=1e-4, atol=1e-5)
    clamped = clamped.to_json()
    share = clamped["layers"][0]["clamped_share"]
    assert 0.1 < share < 0.3  # signed quantile: about 2 × (1 − Q) of the values
    assert clamped["layers"][0]["relative_error"] > 1e-3  # the clamp's cost is in the measured error


#: constructed spectra of the known changes; sv_fro 0.9 keeps 3, 2, 1 and 5 of them (Σσ² kept ≥ 0.81)
KNOWN_SPECTRA = [[2.0, 2.0, 2.0, 0.5], [3.0, 3.0, 0.2, 0.1], [5.0, 0.5, 0.25], [1.0, 1.0, 1.0, 1.0, 1.0]]


def test_extract_dynamic_sv_fro_picks_kohya_s_ranks(tiny_sd1_dir):
    from lorastack.core.extract import extract

    base, tuned = load_pipeline(tiny_sd1_dir), load_pipeline(tiny_sd1_dir)
    weights = targets(tuned, components=("unet",), conv=False)
    names = [n for n, w in weights.items() if min(w.shape) >= 8][: len(KNOWN_SPECTRA)]
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, spectrum in zip(names, KNOWN_SPECTRA):
            S, w = torch.tensor(spectrum), weights[name]
            q1, _ = torch.linalg.qr(torch.randn(w.shape[0], len(S), generator=g))
            q2, _ = torch.linalg.qr(torch.randn(w.shape[1], len(S), generator=g))
            w.add_((q1 * S) @ q2.T)
    result = extract(base, tuned, dynamic="sv_fro", target=0.9, components="unet")
    reports = {r.name: r for r in result.reports}
    assert set(reports) == set(names)
    for name, spectrum in zip(names, KNOWN_SPECTRA):
        S = torch.tensor(spectrum)
        w = weights[name]
        expected = kohya_rank(S, "sv_fro", 0.9, min(w.shape))
        assert reports[name].rank == result.layers[name].rank == expected, (name, spectrum)
        assert reports[name].fro_retained >= 0.9 - 1e-6
        assert reports[name].error == pytest.approx(float(S[expected:].norm()), abs=1e-4)  # √Σ discarded σ²
    assert [reports[n].rank for n in names] == [3, 2, 1, 5]
    capped = extract(base, tuned, rank=2, dynamic="sv_fro", target=0.9, components="unet")
    assert [r.rank for r in capped.reports] == [2, 2, 1, 2]  # --rank caps the criterion


def _image(pipe, stack=None, scales=None, seed=3):
    generator = Generator(pipe, stack)
    options = GenerateOptions("a red square", steps=2, seed=seed, width=64, height=64, adapters=scales or {})
    return np.asarray(generator.generate(options)[0].image, dtype=np.int16)


@pytest.fixture
def stack_files(tmp_path, tiny_sd1_pipe):
    weights = targets(tiny_sd1_pipe)
    a = save(lora_layers(weights, rank=4, seed=1, std=0.1), tmp_path / "a.safetensors")
    b = save(lora_layers(weights, rank=2, seed=2, std=0.1), tmp_path / "b.safetensors", fmt="diffusers")
    return a, b


@pytest.mark.slow  # two bakes, three pipeline loads, four generations
def test_bake_folder_and_single_file_generate_like_the_stack(tmp_path, tiny_sd1_dir, stack_files):
    from lorastack.core.base import load_base

    a, b = stack_files
    single = save_single_file(build_tiny_pipeline("sd1"), tmp_path / "base.safetensors")
    loras = [f"{a}:0.8", f"{b}:te=0.5:unet=0.3"]
    run_bake(str(tiny_sd1_dir), loras, Output(tmp_path / "baked"))
    run_bake(str(single), loras, Output(tmp_path / "baked.safetensors", config=str(tiny_sd1_dir)))
    base = load_base(str(tiny_sd1_dir))
    generator = Generator(base)
    generator.stack.load("a", a)
    generator.stack.load("b", b)
    expected = _image(base, generator.stack, {"a": 0.8, "b": {"text_encoder": 0.5, "unet": 0.3}})
    assert np.abs(expected - _image(base)).max() > 0  # the stack changes the picture
    for baked in ("baked", "baked.safetensors"):
        got = _image(load_base(str(tmp_path / baked), config=tiny_sd1_dir if baked.endswith("s") else None))
        assert np.abs(got - expected).max() <= 1, baked  # float noise at most
    with pytest.raises(Exception, match="single-file"):
        run_bake(str(tiny_sd1_dir), loras, Output(tmp_path / "no.safetensors"))


def test_bake_as_lora_and_cli_json(tmp_path, tiny_sd1_dir, stack_files, lorastack_home):
    a, b = stack_files
    result = CliRunner().invoke(
        cli,
        ["bake", str(tiny_sd1_dir), "--lora", f"{a}:0.8", "--lora", f"{b}:0.5", "--as-lora", "-o",
         str(tmp_path / "s.safetensors"), "--name", "me/stack", "--check-prompts", "a cat", "--check-steps",
         "2", "--check-size", "64", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["summary"]["relative_error"] < 1e-6 and data["registered"].startswith("me/stack@")
    assert data["summary"]["check_prompts"]["max_difference"] <= 1
    bad = CliRunner().invoke(cli, ["resize", str(a), "-o", str(tmp_path / "r.safetensors"), "--rank", "0"])
    assert bad.exit_code == 1 and bad.output.count("\n") == 1 and "out of range" in bad.output
