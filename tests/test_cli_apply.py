"""``generate --apply merge|bypass|auto`` and ``--quantize`` from the command line."""

import importlib.util
import json

import numpy as np
import pytest
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
