"""``generate --apply merge|bypass|auto`` and ``--quantize`` from the command line."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from adapter_cases import make_case
from cli_helpers import run_cli
from PIL import Image

from lorastack.testing.models import load_pipeline


def _generate(base, lora, out, *extra):
    code, stdout, err = run_cli(
        "generate", "a red cat", "--base", base, "--lora", f"{lora}:0.9", "--seed", "3", "--steps", "2",
        "-o", out, "--json", *extra,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(stdout)
    return result, np.asarray(Image.open(result["images"][0]["path"]), dtype=np.int16)


def test_bypass_draws_what_merge_draws(tiny_sd1_dir, tmp_path):
    lora = make_case(load_pipeline(tiny_sd1_dir), "kohya-locon", tmp_path / "a.safetensors", seed=1)
    merged, merged_image = _generate(tiny_sd1_dir, lora, tmp_path / "m", "--apply", "merge")
    bypassed, bypassed_image = _generate(tiny_sd1_dir, lora, tmp_path / "b", "--apply", "bypass")
    assert merged["apply"]["mode"] == "merge" and merged["apply"]["bypass"] == 0
    assert bypassed["apply"]["mode"] == "bypass" and bypassed["apply"]["merge"] == 0 and bypassed["apply"]["bypass"]
    assert np.abs(merged_image - bypassed_image).max() <= 1  # float noise, at most one step of 255


def test_bad_apply_mode_is_one_line(tiny_sd1_dir):
    code, _, err = run_cli("generate", "x", "--base", tiny_sd1_dir, "--apply", "fast")
    assert code == 2 and "'fast' is not one of 'auto', 'merge', 'bypass'" in err


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed")
def test_quantized_base_from_the_cli(tiny_sd1_dir, tmp_path):
    lora = make_case(load_pipeline(tiny_sd1_dir), "peft", tmp_path / "a.safetensors", seed=1)
    result, _ = _generate(tiny_sd1_dir, lora, tmp_path / "q", "--quantize", "torchao-int8")
    assert result["apply"]["mode"] == "auto" and result["apply"]["bypass"] > 0


needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf is not installed")


@pytest.fixture(scope="module")
def flux_files(tiny_pipe_dir, tmp_path_factory):
    """A tiny FLUX.1 dev as the files people download: the transformer as safetensors and as a Q8_0 GGUF file,
    CLIP-L, T5 and the VAE, and a kohya LoRA for it."""
    from safetensors.torch import save_file

    from lorastack.testing.quantized_files import save_gguf
    from lorastack.testing.transformer_adapters import make_original_lora, original_state_dict
    from lorastack.testing.transformer_files import save_transformer_files, transformer_state

    folder = tmp_path_factory.mktemp("flux-files")
    pipe = load_pipeline(tiny_pipe_dir("flux"))
    files = save_transformer_files(pipe, folder)
    if importlib.util.find_spec("gguf") is not None:
        files["gguf"], _ = save_gguf(transformer_state(pipe.transformer), folder / "flux1-dev-Q8_0.gguf")
    files["lora"] = folder / "lora.safetensors"
    save_file(original_state_dict(make_original_lora(pipe, "flux", rank=4, seed=1, std=0.1)), str(files["lora"]))
    return files


def _flux(files, base, config, out, scale, *extra):
    code, stdout, err = run_cli(
        "generate", "a red cat", "--base", base, "--base-config", config, "--text-encoder", files["text_encoder"],
        "--text-encoder-2", files["text_encoder_2"], "--vae", files["vae"], "--lora", f"{files['lora']}:{scale}",
        "--seed", "3", "--steps", "2", "--size", "64", "--device", "cpu", "-o", out, "--json", *extra,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(stdout)
    return result, np.asarray(Image.open(result["images"][0]["path"]), dtype=np.int16)


@needs_gguf
def test_gguf_base_from_the_cli_bypasses_its_quantized_layers(flux_files, tiny_flux_dir, tmp_path, lorastack_home):
    gguf = flux_files["gguf"]
    result, adapted = _flux(flux_files, gguf, tiny_flux_dir, tmp_path / "g", 1.0)
    apply = result["apply"]
    assert apply["mode"] == "auto" and apply["bypass"] > 0 and apply["merge"] > 0  # Q8_0 layers / F32 ones
    _, base = _flux(flux_files, gguf, tiny_flux_dir, tmp_path / "g0", 0.0)
    _, reference = _flux(flux_files, flux_files["transformer"], tiny_flux_dir, tmp_path / "f", 1.0)
    change = np.abs(adapted - base).mean()
    assert change > 2.0  # the adapter draws something else on the GGUF base …
    assert np.abs(adapted - reference).mean() < change / 4  # … what it draws on the float base, Q8_0 rounding aside


@needs_gguf
def test_gguf_base_refuses_quantize_in_one_line(flux_files, tiny_flux_dir, tmp_path, lorastack_home):
    code, _, err = run_cli(
        "generate", "x", "--base", flux_files["gguf"], "--base-config", tiny_flux_dir, "--text-encoder",
        flux_files["text_encoder"], "--text-encoder-2", flux_files["text_encoder_2"], "--vae", flux_files["vae"],
        "--quantize", "torchao-int8", "--device", "cpu", "-o", tmp_path,
    )  # fmt: skip
    assert code == 1 and err.strip().count("\n") == 0 and "quantized already" in err


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed")
def test_quantize_a_single_file_base(flux_files, tiny_flux_dir, tmp_path, lorastack_home):
    from lorastack.core.base import base_info, load_base
    from lorastack.core.quantized import quantized_kind

    parts = {k: flux_files[k] for k in ("text_encoder", "text_encoder_2", "vae")}
    pipe = load_base(flux_files["transformer"], config=tiny_flux_dir, quantize="torchao-int8", **parts)
    kinds = [quantized_kind(m) for m in pipe.transformer.modules() if isinstance(m, torch.nn.Linear)]
    assert kinds and set(kinds) == {"torchao"} and base_info(pipe).extra["quantize"] == "torchao-int8"
    result, _ = _flux(flux_files, flux_files["transformer"], tiny_flux_dir, tmp_path / "q", 1.0, "--quantize",
                      "torchao-int8")  # fmt: skip
    assert result["apply"]["bypass"] > 0


@needs_gguf
def test_damaged_gguf_is_one_line(tmp_path, lorastack_home):
    bad = tmp_path / "flux1-dev-Q8_0.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    code, _, err = run_cli("generate", "x", "--base", bad, "--device", "cpu", "-o", tmp_path / "out")
    assert code == 1 and err.strip().count("\n") == 0 and "not a readable GGUF file" in err
