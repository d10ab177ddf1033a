"""The flow-matching objective of Flux.1 and SD3.x training, piece by piece: noising and target by hand, the
timestep samplers' distributions, the options' rules, LoRA targets, and the training forward's inputs against the
diffusers pipelines' own (conditioning, packed latents, ids, guidance)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lorastack.core.interfaces import PluginOptionError
from lorastack.core.training.flow import (
    DEFAULT_SAMPLERS,
    FlowObjective,
    FlowSampler,
    flow_noised,
    flow_sampler,
    loss_weights,
)
from lorastack.core.training.options import resolve


def _probit(q: float) -> float:
    return math.sqrt(2) * torch.erfinv(torch.tensor(2 * q - 1, dtype=torch.float64)).item()


def test_noisy_latents_and_target_are_the_flow_matching_ones_by_hand():
    x0 = torch.tensor([[[[1.0, -2.0]]], [[[0.5, 4.0]]]])  # B=2, C=1, 1×2
    eps = torch.tensor([[[[3.0, 1.0]]], [[[-1.0, 0.0]]]])
    noisy, target = flow_noised(x0, eps, torch.tensor([0.25, 0.75]))
    # (1 - σ)·x0 + σ·ε and ε - x0, element by element
    assert noisy.tolist() == [[[[0.75 * 1 + 0.25 * 3, 0.75 * -2 + 0.25 * 1]]], [[[0.25 * 0.5 + 0.75 * -1, 0.25 * 4]]]]
    assert target.tolist() == [[[[2.0, 3.0]]], [[[-1.5, -4.0]]]]
    # fixed timesteps (validation) are σ·1000; the model is called with σ·1000 too
    noised = FlowObjective(FlowSampler("uniform")).noised(x0, eps, None, 1, torch.tensor([250, 750]))
    assert torch.equal(noised.noisy, noisy) and torch.equal(noised.target, target)
    assert noised.timesteps.tolist() == [250.0, 750.0] and noised.weights is None


def test_drawn_sigmas_give_timesteps_of_sigma_times_1000():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.zeros(4, 2, 2, 2), torch.ones(4, 2, 2, 2)
    noised = FlowObjective(FlowSampler("sigmoid")).noised(x0, eps, g, 4)
    sigmas = noised.noisy[:, 0, 0, 0]  # x0 = 0, ε = 1: the noisy latents are σ
    assert torch.allclose(noised.timesteps, sigmas * 1000)
    assert torch.equal(noised.target, eps)


N = 200_000


def _draw(sampler: FlowSampler, seq_len: int = 1024) -> torch.Tensor:
    return sampler.sample(N, torch.Generator().manual_seed(0), seq_len).double()


@pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
def test_sampler_quantiles(q):
    # every sampler is a monotone map of a uniform or a logit-normal draw, so its quantiles are the map of theirs
    tol = 0.006
    assert abs(_draw(FlowSampler("uniform")).quantile(q).item() - q) < tol
    logit = 1 / (1 + math.exp(-(0.5 + 0.8 * _probit(q))))
    assert abs(_draw(FlowSampler("sigmoid", 0.5, 0.8)).quantile(q).item() - logit) < tol
    base = 1 / (1 + math.exp(-_probit(q)))
    shifted = 3.0 * base / (1 + 2.0 * base)
    assert abs(_draw(FlowSampler("shift", shift=3.0)).quantile(q).item() - shifted) < tol
    mu = 0.5 + (1.15 - 0.5) * (1024 - 256) / (4096 - 256)  # FLUX.1's mu at 64×64 latent patches
    flux = math.exp(mu) / (math.exp(mu) + 1 / base - 1)
    assert abs(_draw(FlowSampler("flux_shift"), 1024).quantile(q).item() - flux) < tol


def test_sampler_means_and_the_resolution_dependence():
    assert abs(_draw(FlowSampler("uniform")).mean().item() - 0.5) < 0.005
    assert abs(_draw(FlowSampler("sigmoid")).mean().item() - 0.5) < 0.005  # symmetric around 0.5 at mean 0
    assert _draw(FlowSampler("shift", shift=3.0)).mean().item() > 0.65  # shifted toward noise
    small, large = _draw(FlowSampler("flux_shift"), 256), _draw(FlowSampler("flux_shift"), 4096)
    assert small.mean() < large.mean()  # bigger images are trained at more noise
    assert FlowSampler("flux_shift").mu(256) == pytest.approx(0.5)
    assert FlowSampler("flux_shift").mu(4096) == pytest.approx(1.15)
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    assert FlowSampler("flux_shift").mu(1600) == pytest.approx(calculate_shift(1600))


def test_family_defaults_and_the_schedulers_shift():
    options = SimpleNamespace(timestep_sampling="auto", logit_mean=0.0, logit_std=1.0, discrete_flow_shift=None)
    flux = flow_sampler(options, "flux", {"shift": 3.0, "base_shift": 0.5, "max_shift": 1.15,
                                          "base_image_seq_len": 256, "max_image_seq_len": 4096})  # fmt: skip
    sd3 = flow_sampler(options, "sd3", {"shift": 3.0})
    assert (flux.name, sd3.name, sd3.shift) == ("uniform", "shift", 3.0) and DEFAULT_SAMPLERS == {
        "flux": "uniform", "sd3": "shift"}  # fmt: skip
    chosen = flow_sampler(SimpleNamespace(**{**options.__dict__, "timestep_sampling": "shift",
                                             "discrete_flow_shift": 3.1582}), "flux", {"shift": 3.0})  # fmt: skip
    assert chosen.shift == 3.1582


def test_loss_weighting_is_the_sd3_papers():
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    sigmas = torch.tensor([0.1, 0.5, 0.9])
    assert loss_weights("none", sigmas) is None
    for scheme in ("sigma_sqrt", "cosmap"):
        assert torch.allclose(loss_weights(scheme, sigmas), compute_loss_weighting_for_sd3(scheme, sigmas))
    assert torch.isfinite(loss_weights("sigma_sqrt", torch.tensor([0.0]))).all()  # σ = 0 is clamped


def _resolve(family, **given):
    return resolve((), {"resolution": 64, "device": "cpu", **given}, "lora", family=family)


@pytest.mark.parametrize(
    "family, given, message",
    [
        (
            "flux",
            {"timestep_sampling": "logit"},
            "--timestep-sampling 'logit' is not one of: auto, uniform, sigmoid, shift, flux_shift",
        ),
        ("flux", {"loss_weighting": "snr"}, "is not one of: none, sigma_sqrt, cosmap"),
        ("flux", {"prediction_type": "epsilon"}, "flow-matching velocity target: leave it at auto"),
        ("sd3", {"min_snr_gamma": 5.0}, "use --loss-weighting sigma_sqrt or cosmap"),
        ("flux", {"resolution": 72}, "--resolution 72 must be a multiple of 16 on this base (flux: 8x VAE"),
        ("sd1", {"timestep_sampling": "shift"}, "--timestep-sampling is for flow-matching bases (Flux, SD3)"),
        ("sdxl", {"guidance_scale": 3.5}, "--guidance-scale is for flow-matching bases"),
        ("flux", {"logit_std": 0}, "--logit-std"),
    ],
)
def test_flow_options_are_checked_in_one_line(family, given, message):
    with pytest.raises(PluginOptionError) as e:
        _resolve(family, **given)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_targets_default_by_denoiser_and_flow_defaults():
    flux, sd1 = _resolve("flux"), _resolve("sd1")
    assert (flux.targets, sd1.targets) == ("attention-ff", "attention")
    assert (flux.timestep_sampling, flux.guidance_scale, flux.loss_weighting) == ("auto", 1.0, "none")
    assert _resolve("flux", targets="attention").targets == "attention"


def test_lora_targets_of_a_flux_transformer(tiny_flux_pipe):
    from lorastack.core.training.lora import denoiser_targets

    def targets(**options):
        return denoiser_targets(tiny_flux_pipe, SimpleNamespace(**{"lora_layers": "", "targets": "attention-ff",
                                                                   **options}))  # fmt: skip

    default = targets()
    assert "transformer_blocks.1.attn.add_q_proj" in default and "transformer_blocks.0.ff_context.net.2" in default
    assert {"single_transformer_blocks.2.proj_mlp", "single_transformer_blocks.2.proj_out"} <= set(default)
    assert "proj_out" not in default and "x_embedder" not in default  # the final layer and embedders stay frozen
    assert not any(".norm" in n for n in default)
    attention = targets(targets="attention")
    assert "transformer_blocks.0.attn.to_out.0" in attention and not any("ff" in n or "proj_mlp" in n
                                                                         for n in attention)  # fmt: skip
    assert {"proj_out", "x_embedder", "time_text_embed.guidance_embedder.linear_1"} <= set(targets(targets="all"))
    chosen = targets(lora_layers="attn.to_q, proj_mlp")
    assert chosen == sorted([*(f"transformer_blocks.{i}.attn.to_q" for i in range(2)),
                             *(f"single_transformer_blocks.{i}.attn.to_q" for i in range(3)),
                             *(f"single_transformer_blocks.{i}.proj_mlp" for i in range(3))])  # fmt: skip
    from lorastack.core.training.options import TrainingError

    with pytest.raises(TrainingError, match=r"--lora-layers 'to_qq' names no layer of the transformer; .*attn\.to_q"):
        targets(lora_layers="to_qq")


def test_flux_conditioning_and_forward_are_the_pipelines(tiny_flux_pipe):
    from diffusers import FluxPipeline

    from lorastack.core.training.conditioning import encode_captions
    from lorastack.core.training.denoisers import predict

    pipe = tiny_flux_pipe
    captions = ["a red square", "a blue circle"]
    with torch.no_grad():
        hidden, pooled = encode_captions(pipe, captions, "cpu", max_sequence_length=32)
        embeds, pooled_ref, text_ids = pipe.encode_prompt(captions, None, max_sequence_length=32)
        assert torch.equal(hidden, embeds) and torch.equal(pooled, pooled_ref)
        # the pipeline's own latents and ids at 64 px, and its transformer call at σ = 0.6 and guidance 1.0
        packed, image_ids = pipe.prepare_latents(2, 16, 64, 64, torch.float32, "cpu", torch.Generator().manual_seed(0))
        reference = pipe.transformer(hidden_states=packed, timestep=torch.full((2,), 0.6), guidance=torch.ones(2),
                                     pooled_projections=pooled_ref, encoder_hidden_states=embeds, txt_ids=text_ids,
                                     img_ids=image_ids, return_dict=False)[0]  # fmt: skip
        latents = FluxPipeline._unpack_latents(packed, 64, 64, pipe.vae_scale_factor)
        ours = predict("flux", pipe.transformer, latents, torch.full((2,), 600.0), hidden, pooled, [], guidance=1.0)
        assert ours.shape == latents.shape
        assert torch.allclose(FluxPipeline._pack_latents(ours, 2, 16, 8, 8), reference, atol=1e-6)
        other = predict("flux", pipe.transformer, latents, torch.full((2,), 600.0), hidden, pooled, [], guidance=3.5)
        assert not torch.allclose(other, ours)  # the guidance input reaches dev's guidance embedding


def test_sd3_conditioning_and_forward_are_the_pipelines(tiny_sd3_pipe):
    from lorastack.core.training.conditioning import encode_captions
    from lorastack.core.training.denoisers import predict

    pipe = tiny_sd3_pipe
    captions = ["a red square"]
    with torch.no_grad():
        hidden, pooled = encode_captions(pipe, captions, "cpu", max_sequence_length=20)
        embeds, _, pooled_ref, _ = pipe.encode_prompt(captions, None, None, do_classifier_free_guidance=False,
                                                      max_sequence_length=20)  # fmt: skip
        assert torch.equal(hidden, embeds) and torch.equal(pooled, pooled_ref)
        latents = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
        reference = pipe.transformer(hidden_states=latents, timestep=torch.tensor([600.0]),
                                     encoder_hidden_states=embeds, pooled_projections=pooled_ref,
                                     return_dict=False)[0]  # fmt: skip
        ours = predict("sd3", pipe.transformer, latents, torch.tensor([600.0]), hidden, pooled, [])
        assert torch.equal(ours, reference)


def test_t5_length_defaults_and_bounds(tiny_flux_pipe, tiny_sd3_pipe):
    from lorastack.core.training.conditioning import encode_captions, t5_length

    # the published defaults (dev 512, SD3 77), at most the tokenizer's (the tiny T5 reads 32)
    assert t5_length(tiny_flux_pipe) == t5_length(tiny_sd3_pipe) == 32
    assert t5_length(tiny_flux_pipe, 16) == 16
    with torch.no_grad():
        hidden, _ = encode_captions(tiny_flux_pipe, ["a square"], "cpu", max_sequence_length=16)
    assert hidden.shape[1] == 16


def test_latents_are_cached_shifted_and_scaled(tiny_flux_pipe, tmp_path):
    from PIL import Image

    from lorastack.core.interfaces import DatasetItem
    from lorastack.core.training.cache import LatentCache
    from lorastack.core.training.data import DataOptions, TrainingData

    vae = tiny_flux_pipe.vae
    assert (vae.config.shift_factor, vae.config.scaling_factor) == (0.1159, 0.3611)
    data = TrainingData([DatasetItem(Image.new("RGB", (64, 64), (200, 30, 30)), "red", "red.png")],
                        DataOptions(resolution=64), 0)  # fmt: skip
    example = data.example(0, 0)
    cache = LatentCache(tmp_path, vae)
    cached = cache.latents([example], torch.Generator().manual_seed(5))
    with torch.no_grad():
        dist = vae.encode(example["pixels"][None]).latent_dist
    noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(cached, (dist.mean + dist.std * noise - 0.1159) * 0.3611, atol=1e-5)
    again = LatentCache(tmp_path, vae)
    again.latents([example], torch.Generator().manual_seed(5))
    assert (cache.encodes, again.encodes, again.hits) == (1, 0, 1)  # reused: no second VAE call


def test_t5_and_clip_outputs_are_cached_per_caption(tiny_flux_pipe, tmp_path):
    from lorastack.core.training.conditioning import TextCache, encode_captions

    cache = TextCache(tmp_path, tiny_flux_pipe, max_sequence_length=16)
    hidden, pooled = cache.encode(["a square", "a circle"], "cpu")
    with torch.no_grad():
        direct = encode_captions(tiny_flux_pipe, ["a square", "a circle"], "cpu", max_sequence_length=16)
    assert torch.equal(hidden, direct[0]) and torch.equal(pooled, direct[1]) and hidden.shape[1] == 16
    again = TextCache(tmp_path, tiny_flux_pipe, max_sequence_length=16)
    assert torch.equal(again.encode(["a circle", "a square"], "cpu")[0], hidden.flip(0))
    assert (cache.encodes, again.encodes) == (1, 0)  # read from disk, the text encoders not called
    longer = TextCache(tmp_path, tiny_flux_pipe, max_sequence_length=32)  # another T5 length is another entry
    assert longer.identity != cache.identity and longer.encode(["a square"], "cpu")[0].shape[1] == 32


def test_the_loaded_base_decides_when_the_files_guessed_another_family(tiny_flux_pipe):
    from lorastack.core.training.api import _check_objective
    from lorastack.core.training.options import TrainingError

    given = {"prediction_type": "epsilon"}
    guessed = _resolve("sd1", **given)  # an uncached Hub id named like no family reads as SD1 before loading
    with pytest.raises(TrainingError, match="is for DDPM bases; this base \\(flux\\)"):
        _check_objective(tiny_flux_pipe, guessed, given, "sd1")
    _check_objective(tiny_flux_pipe, _resolve("flux"), {}, "sd1")  # nothing the flux base refuses
