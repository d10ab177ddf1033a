"""FLUX.1 and SD3.x bases from single files in the original layouts (as ComfyUI/Forge keep them), fp8-stored ones
included, from alias tables, and from Hub ids in the huggingface_hub cache: the loaded weights are the source
pipeline's, and so is the image."""

import shutil

import pytest
import torch

from lorastack.core.base import base_info, checkpoint_family, checkpoint_variant, load_base
from lorastack.testing.hub_cache import seed_hf_cache
from lorastack.testing.models import load_pipeline
from lorastack.testing.transformer_files import round_through_fp8, save_bundled_checkpoint, save_transformer_files

PARTS = {
    "flux": ("transformer", "vae", "text_encoder", "text_encoder_2"),
    "sd3": ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"),
}
VARIANTS = {"flux": "flux1-dev", "flux-schnell": "flux1-schnell", "sd3": "sd3-medium", "sd3.5": "sd3.5-medium"}


def _base(family):
    return "flux" if family.startswith("flux") else "sd3"


def _same_weights(reference, pipe, family):
    for part in PARTS[_base(family)]:
        a, b = getattr(reference, part).state_dict(), getattr(pipe, part).state_dict()
        assert a.keys() == b.keys(), part
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, (part, different[:3])


def _latents(pipe):
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    return pipe(
        "a photo of a cat", num_inference_steps=2, height=64, width=64, max_sequence_length=32, generator=g,
        output_type="latent",
    ).images  # fmt: skip


def _components(paths):
    return {k: v for k, v in paths.items() if k != "transformer"}


@pytest.mark.parametrize("family", ["flux", "flux-schnell", "sd3", "sd3.5"])
def test_transformer_file_with_component_files(family, tiny_pipe_dir, tmp_path):
    folder = tiny_pipe_dir(family)
    reference = load_pipeline(folder)
    paths = save_transformer_files(reference, tmp_path, prefixed=family == "sd3")  # both key forms are read
    assert checkpoint_family(paths["transformer"]) == (_base(family), False)
    assert checkpoint_variant(paths["transformer"]) == VARIANTS[family]
    pipe = load_base(paths["transformer"], config=folder, **_components(paths))
    info = base_info(pipe)
    assert info.kind == "single_file" and info.family == _base(family) and info.extra["variant"] == VARIANTS[family]
    recorded = info.extra["components"]
    assert set(recorded) == set(_components(paths))
    assert recorded["vae"] == {"path": str(paths["vae"].resolve()), "size": paths["vae"].stat().st_size}
    _same_weights(reference, pipe, family)
    # the weights are equal bit for bit (above); the images agree to float rounding only: CPU matmul kernels
    # take another path (and so another order of sums) when a weight lies at another memory alignment, and
    # where diffusers' loader places a tensor depends on what the process allocated before
    torch.testing.assert_close(_latents(pipe), _latents(reference), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("family", ["flux", "sd3.5"])
def test_bundled_fp8_checkpoint(family, tiny_pipe_dir, tmp_path):
    folder = tiny_pipe_dir(family)
    reference = load_pipeline(folder)
    path = save_bundled_checkpoint(reference, tmp_path / "bundle.safetensors", fp8=True)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:  # really stored as fp8, under ComfyUI's prefixes
        names = f.keys()
        key = next(k for k in names if k.startswith("model.diffusion_model."))
        assert f.get_tensor(key).dtype == torch.float8_e4m3fn
        assert any(k.startswith("text_encoders.t5xxl.transformer.") for k in names)
    pipe = load_base(path, config=folder)
    assert pipe.transformer.dtype == torch.float32 and base_info(pipe).extra.get("components") is None
    round_through_fp8(reference)
    _same_weights(reference, pipe, family)
    # the weights are equal bit for bit (above); the images agree to float rounding only: CPU matmul kernels
    # take another path (and so another order of sums) when a weight lies at another memory alignment, and
    # where diffusers' loader places a tensor depends on what the process allocated before
    torch.testing.assert_close(_latents(pipe), _latents(reference), rtol=1e-3, atol=1e-3)


def test_fp8_transformer_upcast_to_bf16_with_a_component_replacing_the_bundled_one(tiny_flux_dir, tmp_path):
    reference = load_pipeline(tiny_flux_dir)
    bundle = save_bundled_checkpoint(reference, tmp_path / "b.safetensors", fp8={"transformer"}, parts=["vae"])
    other = load_pipeline(tiny_flux_dir)
    with torch.no_grad():
        for p in other.vae.parameters():
            p.mul_(0.5)
    files = save_transformer_files(other, tmp_path / "other")
    pipe = load_base(
        bundle, config=tiny_flux_dir, dtype="bf16", text_encoder=files["text_encoder"],
        text_encoder_2=files["text_encoder_2"], vae=files["vae"],
    )  # fmt: skip
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
    fp8 = {k: v.to(torch.float8_e4m3fn).to(torch.bfloat16) for k, v in reference.transformer.state_dict().items()}
    assert all(torch.equal(fp8[k], v) for k, v in pipe.transformer.state_dict().items())
    halved = {k: v.to(torch.bfloat16) for k, v in other.vae.state_dict().items()}  # the given VAE wins
    assert all(torch.equal(halved[k], v) for k, v in pipe.vae.state_dict().items())


def test_t5_in_fp16_keeps_its_output_projections_in_fp32(tiny_sd3_dir, tmp_path):
    paths = save_transformer_files(load_pipeline(tiny_sd3_dir), tmp_path)
    pipe = load_base(paths["transformer"], config=tiny_sd3_dir, dtype="fp16", **_components(paths))
    t5 = pipe.text_encoder_3
    assert t5.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32  # as from_pretrained does
    assert t5.shared.weight.dtype == torch.float16 and t5.encoder.embed_tokens is t5.shared


def test_alias_table_names_the_base_and_its_parts(tiny_flux_dir, tmp_path, monkeypatch):
    paths = save_transformer_files(load_pipeline(tiny_flux_dir), tmp_path)
    config = tmp_path / "config.toml"
    lines = [f'plain = "{tiny_flux_dir}"', "[aliases.flux-dev]", f'base = "{paths["transformer"]}"']
    lines += [f'{slot} = "{path}"' for slot, path in _components(paths).items()]
    config.write_text("[aliases]\n" + "\n".join(lines) + "\n")
    monkeypatch.setenv("LORASTACK_CONFIG", str(config))
    pipe = load_base("flux-dev", config=tiny_flux_dir)
    info = base_info(pipe)
    assert info.extra["alias"] == "flux-dev" and info.location == str(paths["transformer"].resolve())
    assert set(info.extra["components"]) == {"text_encoder", "text_encoder_2", "vae"}
    assert base_info(load_base("plain")).kind == "folder"  # plain string aliases keep working


def test_hub_id_from_the_cache_and_the_t5_tokenizer_found_there(tiny_flux_dir, tmp_path):
    hub = tmp_path / "hub"
    commit = seed_hf_cache(hub, "black-forest-labs/FLUX.1-dev", tiny_flux_dir)
    pipe = load_base("black-forest-labs/FLUX.1-dev", hf_cache_dir=hub)
    info = base_info(pipe)
    assert info.kind == "hub" and info.family == "flux" and info.revision == commit
    reference = load_pipeline(tiny_flux_dir)
    _same_weights(reference, pipe, "flux")
    # a config folder without the T5 tokenizer: the one of the cached FLUX.1-dev snapshot is used
    config = tmp_path / "config"
    shutil.copytree(tiny_flux_dir, config, ignore=shutil.ignore_patterns("tokenizer_2", "*.safetensors"))
    paths = save_transformer_files(reference, tmp_path / "files")
    single = load_base(paths["transformer"], config=config, hf_cache_dir=hub, **_components(paths))
    assert single.tokenizer_2("a cat").input_ids == reference.tokenizer_2("a cat").input_ids
    torch.testing.assert_close(_latents(single), _latents(reference), rtol=1e-3, atol=1e-3)  # see above
    explicit = load_base(
        paths["transformer"], config=config, t5_tokenizer=tiny_flux_dir / "tokenizer_2", **_components(paths)
    )
    assert base_info(explicit).extra["t5_tokenizer"] == str((tiny_flux_dir / "tokenizer_2").resolve())
