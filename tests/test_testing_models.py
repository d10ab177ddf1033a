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
