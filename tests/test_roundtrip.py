"""diffusers → kohya → diffusers is loss-free; metadata survives; hashes follow their definitions."""

import json
import shlex
import subprocess

import pytest
import torch
from adapter_cases import make_case
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lorastack.adapters import (
    autov2,
    autov3,
    file_and_tensor_sha256,
    file_sha256,
    read_adapter,
    tensor_sha256,
    write_adapter,
)
from lorastack.testing.models import load_pipeline

META = {
    "modelspec.title": "Figurine",
    "modelspec.description": "a tiny test figurine",
    "modelspec.trigger_phrase": "aawxbc figurine, aawxbc",
    "modelspec.resolution": "512x512",
    "modelspec.author": "lorastack tests",
    "ss_sd_model_name": "runwayml/stable-diffusion-v1-5",
    "ss_max_train_steps": "400",
    "ss_tag_frequency": json.dumps({"5_aawxbc": {"aawxbc": 12, "figurine": 9, "table": 2}}),
}


def _with_header(path, extra):
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        header = {**(f.metadata() or {}), **extra}
    save_file(tensors, str(path), metadata=header)
    return path


def _same_layers(a, b):
    assert set(a.layers) == set(b.layers)
    for name, layer in a.layers.items():
        other = b.layers[name]
        assert type(other) is type(layer)
        assert layer.scale == other.scale and layer.rank == other.rank
        assert layer.alpha == other.alpha, name
        for key, t in layer.tensors().items():
            assert torch.equal(t, other.tensors()[key]), f"{name}.{key}"


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("case", ["peft", "kohya-locon", "peft-dora"])
def test_diffusers_kohya_diffusers_is_lossless(family, case, tiny_pipe_dir, tmp_path):
    pipe = load_pipeline(tiny_pipe_dir(family))
    original = _with_header(make_case(pipe, case, tmp_path / "original.safetensors"), META)
    first = read_adapter(original)
    as_diffusers = read_adapter(write_adapter(first, tmp_path / "a.safetensors", "diffusers"))
    as_kohya = read_adapter(write_adapter(as_diffusers, tmp_path / "b.safetensors", "kohya"))
    back = read_adapter(write_adapter(as_kohya, tmp_path / "c.safetensors", "diffusers"))
    for adapter in (as_diffusers, as_kohya, back):
        _same_layers(first, adapter)
        meta = adapter.metadata
        assert meta.title == "Figurine" and meta.description == "a tiny test figurine"
        assert meta.trigger_words == ["aawxbc figurine", "aawxbc"]
        assert meta.base_model == "runwayml/stable-diffusion-v1-5" and meta.resolution == "512x512"
        assert meta.training["max_train_steps"] == "400"
        assert meta.training["top_tags"] == ["aawxbc", "figurine", "table"]
        assert meta.raw["ss_tag_frequency"] == META["ss_tag_frequency"]
    # both writers' files hash to the same tensor data they claim in sshs_model_hash
    for name in ("a", "b", "c"):
        path = tmp_path / f"{name}.safetensors"
        with safe_open(str(path), "pt") as f:
            assert f.metadata()["sshs_model_hash"] == tensor_sha256(path)


def test_kohya_writer_uses_the_keys_a1111_and_comfyui_expect(tiny_sdxl_dir, tiny_sd1_dir, tmp_path):
    sd1 = make_case(load_pipeline(tiny_sd1_dir), "peft", tmp_path / "sd1.safetensors")
    sd1_keys = load_file(str(write_adapter(read_adapter(sd1), tmp_path / "sd1-k.safetensors", "kohya")))
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in sd1_keys
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha" in sd1_keys
    assert sd1_keys["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha"].item() == 8.0

    xl = make_case(load_pipeline(tiny_sdxl_dir), "peft", tmp_path / "xl.safetensors")
    xl_keys = load_file(str(write_adapter(read_adapter(xl), tmp_path / "xl-k.safetensors", "kohya")))
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in xl_keys
    assert "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in xl_keys
    # SDXL UNet keys use the SGM block names kohya's SDXL trainer writes
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in xl_keys
    assert not any(k.startswith("lora_unet_down_blocks") for k in xl_keys)
    with safe_open(str(tmp_path / "xl-k.safetensors"), "pt") as f:
        header = f.metadata()
    assert header["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert header["ss_network_dim"] == "4" and header["ss_network_alpha"] == "8"


def _sha256sum(path, skip: int = 0) -> str:
    """coreutils' sha256 of the file from byte ``skip`` on: an oracle independent of lorastack's chunked reader."""
    command = f"tail -c +{skip + 1} {shlex.quote(str(path))} | sha256sum"
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True).stdout.split()[0]


@pytest.mark.parametrize("size", [3, 300_001], ids=["small", "over-a-chunk"])
def test_hashes_agree_with_sha256sum(tmp_path, size):
    # the tensor hash is kohya's sshs_model_hash / A1111's addnet hash (civitai AutoV3): everything after the
    # 8-byte length and the header; the big case puts the header's end inside the first read chunk and the data
    # across several
    path = tmp_path / "a.safetensors"
    save_file({"w": torch.arange(size, dtype=torch.float32)}, path, metadata={"ss_network_dim": "4"})
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert file_sha256(path) == _sha256sum(path)
    assert tensor_sha256(path) == _sha256sum(path, skip=8 + header_len) != file_sha256(path)
    assert file_and_tensor_sha256(path) == (_sha256sum(path), _sha256sum(path, skip=8 + header_len))
    assert autov2(file_sha256(path)) == _sha256sum(path)[:10].upper()
    assert autov3(tensor_sha256(path)) == _sha256sum(path, skip=8 + header_len)[:12].upper()


def test_the_empty_file_hash_is_the_published_one(tmp_path):
    (tmp_path / "empty.bin").write_bytes(b"")  # FIPS 180-4's test vector for the empty message
    assert file_sha256(tmp_path / "empty.bin") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_editing_metadata_changes_the_file_hash_but_not_the_tensor_hash(tiny_sd1_dir, tmp_path):
    path = make_case(load_pipeline(tiny_sd1_dir), "peft", tmp_path / "a.safetensors")
    before = file_and_tensor_sha256(path)
    _with_header(path, {"modelspec.trigger_phrase": "something new", "modelspec.title": "renamed"})
    after = file_and_tensor_sha256(path)
    assert after[0] != before[0] and after[1] == before[1]
    assert read_adapter(path).metadata.trigger_words == ["something new"]


def test_files_without_diffusers_metadata_read_with_alpha_equal_rank(tiny_sd1_dir, tmp_path):
    pipe = load_pipeline(tiny_sd1_dir)
    with_meta = read_adapter(make_case(pipe, "peft", tmp_path / "m.safetensors"))
    without = read_adapter(make_case(pipe, "peft-nometa", tmp_path / "n.safetensors"))
    assert with_meta.alpha_source == "metadata" and with_meta.alphas() == [8.0]
    assert without.alpha_source == "assumed" and without.alphas() == []
    assert all(layer.scale == 1.0 for layer in without.layers.values())
    # kohya writes the implied alpha explicitly, so every other tool reads the same strength
    kohya = read_adapter(write_adapter(without, tmp_path / "k.safetensors", "kohya"))
    assert kohya.alphas() == [4.0] and all(layer.scale == 1.0 for layer in kohya.layers.values())
