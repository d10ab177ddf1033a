"""load_base: diffusers folders, single-file checkpoints (offline), Hub ids from the cache, aliases; clear errors."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from lorastack.core.base import base_info, checkpoint_family, load_base, shipped_config_dir
from lorastack.core.errors import BaseModelError
from lorastack.testing.hub_cache import seed_hf_cache
from lorastack.testing.models import build_full_pipeline, load_pipeline
from lorastack.testing.single_file import save_single_file

COMPONENTS = {"sd1": ("unet", "vae", "text_encoder"), "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2")}


def _same_weights(a, b, components):
    for component in components:
        sa, sb = getattr(a, component).state_dict(), getattr(b, component).state_dict()
        assert sa.keys() == sb.keys(), component
        assert all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa), component


def _latents(pipe):
    g = torch.Generator().manual_seed(0)
    return pipe(
        "a photo of a cat", num_inference_steps=2, height=64, width=64, generator=g, output_type="latent"
    ).images


def test_folder(tiny_sd1_dir):
    pipe = load_base(tiny_sd1_dir)
    info = base_info(pipe)
    assert info.kind == "folder" and info.family == "sd1" and info.dtype == "fp32"
    assert torch.equal(_latents(pipe), _latents(load_pipeline(tiny_sd1_dir)))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_single_file_has_the_same_weights(family, tiny_pipe_dir, tmp_path):
    folder = tiny_pipe_dir(family)
    reference = load_pipeline(folder)
    path = save_single_file(reference, tmp_path / "model.safetensors")
    pipe = load_base(path, config=folder)
    assert base_info(pipe).kind == "single_file" and base_info(pipe).family == family
    _same_weights(reference, pipe, COMPONENTS[family])
    reference.set_progress_bar_config(disable=True)
    # the weights are equal bit for bit (above); the images agree to float rounding only: CPU matmul kernels
    # take another path (and so another order of sums) when a weight lies at another memory alignment, and
    # where diffusers' loader places a tensor depends on what the process allocated before
    torch.testing.assert_close(_latents(pipe), _latents(reference), rtol=1e-3, atol=1e-3)


def test_single_file_never_touches_the_network(tiny_sd1_dir, tmp_path):
    """Online mode, but the Hub endpoint is a closed port: any download attempt would fail the load."""
    path = save_single_file(load_pipeline(tiny_sd1_dir), tmp_path / "model.safetensors")
    script = textwrap.dedent(f"""
        from lorastack.core.base import load_base
        pipe = load_base({str(path)!r}, config={str(tiny_sd1_dir)!r})
        print(type(pipe).__name__)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "StableDiffusionPipeline"


@pytest.mark.fullsize
@pytest.mark.parametrize("family, config", [("sd1", "sd15"), ("sdxl", "sdxl")])
def test_full_size_single_file_offline_with_shipped_configs(family, config, tmp_path):
    reference = build_full_pipeline(config, dtype=torch.float16)
    path = save_single_file(reference, tmp_path / "model.safetensors")
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    script = textwrap.dedent(f"""
        import torch
        from lorastack.core.base import load_base
        pipe = load_base({str(path)!r}, dtype="fp16")
        torch.save({{c: getattr(pipe, c).state_dict() for c in {COMPONENTS[family]!r}}}, {str(tmp_path / "w.pt")!r})
        print(pipe.tokenizer("a photo of a cat").input_ids)
    """)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[49406, 320, 1125, 539, 320, 2368, 49407]"  # the real CLIP
    loaded = torch.load(tmp_path / "w.pt")
    for component in COMPONENTS[family]:
        ref = getattr(reference, component).state_dict()
        assert all(torch.equal(ref[k], loaded[component][k]) for k in ref), component


def test_checkpoint_family_from_keys(tmp_path):
    def ckpt(name, keys):
        path = tmp_path / name
        save_file({k: torch.zeros(shape) for k, shape in keys.items()}, str(path))
        return path

    unet = {"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3)}
    inpaint = {"model.diffusion_model.input_blocks.0.0.weight": (8, 9, 3, 3)}
    sd1 = {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (2, 2)}
    sd2 = {"cond_stage_model.model.token_embedding.weight": (2, 2)}
    xl = {"conditioner.embedders.1.model.token_embedding.weight": (2, 2)}
    assert checkpoint_family(ckpt("a.safetensors", {**unet, **sd1})) == ("sd1", False)
    assert checkpoint_family(ckpt("b.safetensors", {**inpaint, **sd1})) == ("sd1", True)
    assert checkpoint_family(ckpt("c.safetensors", {**unet, **sd2})) == ("sd2", False)
    assert checkpoint_family(ckpt("d.safetensors", {**unet, **xl})) == ("sdxl", False)
    with pytest.raises(BaseModelError, match="not a Stable Diffusion checkpoint"):
        checkpoint_family(ckpt("e.safetensors", {"lora_unet_x.lora_down.weight": (2, 2)}))


def test_inpainting_config_variant():
    folder = shipped_config_dir("sd1", inpainting=True)
    assert '"in_channels": 9' in (folder / "unet" / "config.json").read_text()
    assert "StableDiffusionInpaintPipeline" in (folder / "model_index.json").read_text()


def test_hub_id_from_the_cache(tiny_sdxl_dir, tmp_path):
    commit = seed_hf_cache(tmp_path / "hub", "someone/tiny-xl", tiny_sdxl_dir)
    pipe = load_base("someone/tiny-xl", hf_cache_dir=tmp_path / "hub")
    info = base_info(pipe)
    assert info.kind == "hub" and info.location == "someone/tiny-xl" and info.revision == commit
    assert info.family == "sdxl"
    with pytest.raises(BaseModelError, match="someone/other: not in the Hugging Face cache.*offline"):
        load_base("someone/other", hf_cache_dir=tmp_path / "hub")


def test_alias_from_the_user_config(tiny_sd1_dir, tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text(f'[aliases]\nmybase = "{tiny_sd1_dir}"\n')
    monkeypatch.setenv("LORASTACK_CONFIG", str(config))
    pipe = load_base("mybase")
    assert base_info(pipe).extra == {"alias": "mybase"} and base_info(pipe).location == str(tiny_sd1_dir.resolve())
    with pytest.raises(BaseModelError, match=r"'nobase' is not a folder.*aliases: mybase"):
        load_base("nobase")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.safetensors", "no such file or folder"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "not a diffusers pipeline"),
        (lambda p: (p / "bad.safetensors").write_bytes(b"nonsense") and p / "bad.safetensors", "not a readable"),
        (lambda p: (p / "m.ckpt").write_bytes(b"x") and p / "m.ckpt", "--allow-pickle"),
    ],
)
def test_bad_sources(make, message, tmp_path):
    with pytest.raises(BaseModelError, match=message) as info:
        load_base(make(tmp_path))
    assert "\n" not in str(info.value)


def test_single_file_with_the_wrong_config_is_a_clear_error(tiny_sd1_dir, tmp_path):
    path = save_single_file(load_pipeline(tiny_sd1_dir), tmp_path / "tiny.safetensors")
    with pytest.raises(BaseModelError, match="cannot load as a sd1 checkpoint"):
        load_base(path)  # the shipped SD1.5 config does not describe the tiny model


def test_device_dtype_and_memory_options(tiny_sd1_dir):
    with pytest.raises(BaseModelError, match="unknown dtype 'fp8'"):
        load_base(tiny_sd1_dir, dtype="fp8")
    with pytest.raises(BaseModelError, match="unknown device 'tpu'"):
        load_base(tiny_sd1_dir, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(BaseModelError, match="no CUDA GPU"):
            load_base(tiny_sd1_dir, device="cuda")
    with pytest.raises(BaseModelError, match="needs --device cuda"):
        load_base(tiny_sd1_dir, cpu_offload=True)
    plain = _latents(load_base(tiny_sd1_dir))
    sliced = load_base(tiny_sd1_dir, attention_slicing=True, vae_tiling=True)
    assert sliced.vae.use_tiling
    assert any(type(p).__name__ == "SlicedAttnProcessor" for p in sliced.unet.attn_processors.values())
    torch.testing.assert_close(_latents(sliced), plain, atol=1e-3, rtol=0)  # sliced attention sums in another order
    half = load_base(tiny_sd1_dir, dtype="bf16")
    assert half.unet.dtype == torch.bfloat16 and base_info(half).dtype == "bf16"
