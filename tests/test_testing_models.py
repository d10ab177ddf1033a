"""The offline models lorastack tests on: deterministic, real architectures, loadable like a user's model."""

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from lorastack.testing.models import (
    build_full_pipeline,
    build_full_text_encoder,
    build_full_unet,
    build_tiny_pipeline,
    load_pipeline,
)
from lorastack.testing.tokenizer import DEFAULT_WORDS, tiny_clip_tokenizer


def test_tiny_tokenizer(tmp_path):
    tok = tiny_clip_tokenizer(tmp_path)
    assert tok.model_max_length == 77 and len(tok) >= 514
    ids = tok("a photo of a red figurine").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 8  # one token per word
    rare = tok("aawxbc").input_ids  # unknown words fall back to bytes, never UNK
    assert len(rare) > 3 and tok.decode(rare, skip_special_tokens=True) == "aawxbc"
    assert all(w in tok.get_vocab() or f"{w}</w>" in tok.get_vocab() for w in DEFAULT_WORDS)
    # every listed word is one token, also when a merge of another word lies inside it ("r e" of red in green)
    assert [w for w in DEFAULT_WORDS if len(tok(w, add_special_tokens=False).input_ids) != 1] == []


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_tiny_builds_are_deterministic(family):
    a, b, c = (build_tiny_pipeline(family, seed=s).unet.state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    "family, cls, fixture",
    [("sd1", StableDiffusionPipeline, "tiny_sd1_dir"), ("sdxl", StableDiffusionXLPipeline, "tiny_sdxl_dir")],
)
def test_tiny_pipeline_loads_through_from_pretrained(family, cls, fixture, request):
    folder = request.getfixturevalue(fixture)
    loaded = load_pipeline(folder)
    assert type(loaded) is cls
    built = build_tiny_pipeline(family)

    def latents(pipe):
        pipe.set_progress_bar_config(disable=True)
        g = torch.Generator().manual_seed(0)
        return pipe("a photo of a cat", num_inference_steps=2, height=64, width=64, generator=g, output_type="latent")

    for component in ("unet", "vae", "text_encoder"):  # the weights round-trip exactly
        a, b = getattr(loaded, component).state_dict(), getattr(built, component).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # two pipeline objects may sum in another order on a loaded multi-threaded CPU: equal within float noise
    torch.testing.assert_close(latents(loaded).images, latents(built).images, atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    "family, unet_params, text_params",
    [("sd15", 859_520_964, 123_060_480), ("sd21", 865_910_724, 340_387_840), ("sdxl", 2_567_463_684, 123_060_480)],
)
def test_full_size_configs_match_the_real_models(family, unet_params, text_params):
    assert sum(p.numel() for p in build_full_unet(family, device="meta").parameters()) == unet_params
    assert sum(p.numel() for p in build_full_text_encoder(family, device="meta").parameters()) == text_params
    if family == "sdxl":
        te2 = build_full_text_encoder(family, "text_encoder_2", device="meta")
        assert sum(p.numel() for p in te2.parameters()) == 694_659_840


@pytest.mark.fullsize
def test_full_size_pipeline_runs_one_step():
    pipe = build_full_pipeline("sd15")
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a photo", num_inference_steps=1, height=256, width=256, output_type="latent").images
    assert out.shape == (1, 4, 32, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("family", ["flux", "flux-schnell", "sd3", "sd3.5"])
def test_tiny_transformer_pipelines_have_the_real_structure(family):
    a, b, c = (build_tiny_pipeline(family, seed=s) for s in (0, 0, 1))
    sa, sb, sc = (p.transformer.state_dict() for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and not all(torch.equal(sa[k], sc[k]) for k in sa)
    config = a.transformer.config
    names = {n for n, _ in a.transformer.named_modules()}
    if family.startswith("flux"):
        assert (config.num_layers, config.num_single_layers) == (2, 3) and config.in_channels == 64
        assert config.guidance_embeds == (family == "flux")
        assert ("time_text_embed.guidance_embedder.linear_1" in names) == (family == "flux")
        assert "single_transformer_blocks.2.proj_mlp" in names and "transformer_blocks.1.attn.add_q_proj" in names
        assert type(a.text_encoder_2).__name__ == "T5EncoderModel"
    else:
        assert config.num_layers == 3 and "transformer_blocks.2.attn.add_q_proj" in names
        assert ("transformer_blocks.0.attn2.to_q" in names) == (family == "sd3.5")
        assert type(a.text_encoder_3).__name__ == "T5EncoderModel"
    assert a.vae.config.latent_channels == 16  # as the real FLUX.1 and SD3 VAEs


def test_tiny_t5_tokenizer(tmp_path):
    from lorastack.testing.transformer_models import tiny_t5_tokenizer

    tok = tiny_t5_tokenizer(tmp_path)
    ids = tok("a photo of a cat").input_ids
    assert len(ids) == 6 and ids[-1] == tok.eos_token_id  # one token per listed word, then </s>
    rare = tok("aawxbc", add_special_tokens=False).input_ids
    assert tok.unk_token_id not in rare and tok.decode(rare) == "aawxbc"  # unknown words fall back to characters


def test_tiny_base_command_writes_a_loadable_flux_folder(tmp_path):
    from click.testing import CliRunner
    from diffusers import FluxPipeline

    from lorastack.core.base_settings import folder_settings
    from lorastack.testing.__main__ import main

    result = CliRunner().invoke(main, ["tiny-base", str(tmp_path / "flux"), "--family", "flux"])
    assert result.exit_code == 0, result.output
    assert type(load_pipeline(tmp_path / "flux")) is FluxPipeline
    settings = folder_settings(tmp_path / "flux")
    assert (settings.family, settings.resolution, settings.guidance) == ("flux", 64, 3.5)
