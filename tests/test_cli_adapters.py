"""``lorastack inspect`` and ``lorastack convert`` as a user runs them."""

import hashlib
import json

import pytest
from adapter_cases import make_case
from cli_helpers import run_cli
from safetensors.torch import save_file

from lorastack.adapters import file_sha256, read_adapter, tensor_sha256
from lorastack.testing.models import load_pipeline


@pytest.fixture
def kohya_file(tiny_sdxl_dir, tmp_path):
    return make_case(load_pipeline(tiny_sdxl_dir), "kohya-locon", tmp_path / "style.safetensors")


def test_inspect_report(kohya_file):
    code, out, err = run_cli("inspect", kohya_file)
    assert code == 0 and err == ""
    assert "format        kohya" in out and "family        SDXL" in out
    assert "locon x" in out and "lora x" in out and "rank          4" in out and "alpha         2" in out
    assert file_sha256(kohya_file) in out and tensor_sha256(kohya_file) in out


def test_inspect_json(kohya_file):
    code, out, _ = run_cli("inspect", kohya_file, "--json")
    info = json.loads(out)
    adapter = read_adapter(kohya_file)
    assert code == 0
    assert info["family"] == "sdxl" and info["format"] == "kohya" and info["ranks"] == [4] and info["alphas"] == [2.0]
    assert info["modules"] == adapter.components() and info["layers"] == len(adapter.layers)
    independent = hashlib.sha256(kohya_file.read_bytes()).hexdigest()
    assert info["sha256"] == independent and info["autov2"] == independent[:10].upper()  # civitai's AutoV2
    assert info["tensor_sha256"] == tensor_sha256(kohya_file) and info["size"] == kohya_file.stat().st_size


def test_convert_both_ways(kohya_file, tmp_path):
    code, out, _ = run_cli("convert", kohya_file, "--format", "diffusers", "-o", tmp_path / "d.safetensors")
    assert code == 0 and "wrote" in out
    # --to is the deprecated spelling of --format: it still works, and --help no longer shows it
    code, _, _ = run_cli("convert", tmp_path / "d.safetensors", "--to", "kohya", "-o", tmp_path / "k.safetensors")
    assert code == 0 and "--to" not in run_cli("convert", "--help")[1]
    a, b = read_adapter(kohya_file), read_adapter(tmp_path / "k.safetensors")
    assert set(a.layers) == set(b.layers) and b.source_format == "kohya"


def test_convert_never_overwrites_without_force(kohya_file, tmp_path):
    target = tmp_path / "taken.safetensors"
    target.write_bytes(b"precious")
    code, _, err = run_cli("convert", kohya_file, "--format", "diffusers", "-o", target)
    assert code == 1 and "already exists" in err and target.read_bytes() == b"precious"
    code, _, _ = run_cli("convert", kohya_file, "--format", "diffusers", "-o", target, "--force")
    assert code == 0 and read_adapter(target).source_format == "diffusers"


def test_convert_refuses_what_a_format_cannot_hold(tmp_path):
    import torch

    src = tmp_path / "loha.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{name}.hada_w1_a": torch.randn(8, 2), f"{name}.hada_w1_b": torch.randn(2, 8),
               f"{name}.hada_w2_a": torch.randn(8, 2), f"{name}.hada_w2_b": torch.randn(2, 8)}, str(src))  # fmt: skip
    code, _, err = run_cli("convert", src, "--format", "diffusers", "-o", tmp_path / "out.safetensors")
    assert code == 1 and "loha" in err and "--format kohya" in err and not (tmp_path / "out.safetensors").exists()


def test_bad_option_values_list_the_choices(kohya_file, tmp_path):
    code, _, err = run_cli("convert", kohya_file, "--format", "ckpt", "-o", tmp_path / "x")
    assert code == 2 and "'diffusers', 'kohya', 'bfl'" in err
    code, _, err = run_cli("convert", kohya_file, "--format", "kohya", "-o", tmp_path / "x", "--family", "sd4")
    assert code == 2 and "'sd1', 'sd2', 'sdxl', 'flux', 'sd3'" in err
