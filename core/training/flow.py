"""The training objectives: DDPM noise/v prediction (SD1.x, SD2.x, SDXL) and rectified flow (Flux.1, SD3.x).

A family's objective is data (``adapters.families``: ``objective == "flow"``). Flow matching noises a latent ``x0``
as ``(1 - σ)·x0 + σ·ε`` and the model predicts the velocity ``ε - x0`` (kohya's ``model_prediction_type raw``),
with the timestep ``σ·1000``. Where σ is drawn from is the sampler:

``uniform``     σ ~ U(0, 1) (diffusers' train_dreambooth_lora_flux.py, weighting scheme ``none``)
``sigmoid``     σ = sigmoid(mean + std·N(0, 1)), the logit-normal of the SD3 paper
``shift``       the logit-normal σ shifted: ``shift·σ / (1 + (shift - 1)·σ)`` (SD3's schedule, shift 3.0; kohya's
                ``--discrete_flow_shift``)
``flux_shift``  the logit-normal σ shifted by ``mu`` from the image's sequence length, as FLUX.1's scheduler does
                at inference (``base_shift``/``max_shift`` over ``base_image_seq_len``/``max_image_seq_len``)

Every draw comes from the generator the engine passes, so a resumed run draws the same σ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .options import FLOW_ONLY_OPTIONS, FLOW_SAMPLERS, LOSS_WEIGHTINGS, TrainingError

#: the published trainers' samplers: diffusers' Flux script draws uniformly, its SD3 script logit-normal on SD3's
#: shifted schedule (which is the ``shift`` sampler at the scheduler's shift)
DEFAULT_SAMPLERS = {"flux": "uniform", "sd3": "shift"}
#: the smallest σ the weighting sees: sigma_sqrt is σ⁻², infinite at σ = 0 (diffusers' discrete σ stop at 1/1000)
MIN_WEIGHT_SIGMA = 1e-3


@dataclass(frozen=True)
class Noised:
    """One step's model input: the noisy latents, what the model must predict, its timesteps, per-example weights."""

    noisy: torch.Tensor
    target: torch.Tensor
    timesteps: torch.Tensor  # what the denoiser is called with: DDPM's integer steps, flow's σ·1000
    weights: torch.Tensor | None  # B, or None for 1


@dataclass(frozen=True)
class FlowSampler:
    """How σ is drawn: the sampler's name and its numbers (the scheduler's shift settings filled in)."""

    name: str
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 3.0
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_seq_len: int = 256
    max_seq_len: int = 4096

    def mu(self, seq_len: int) -> float:
        """FLUX.1's resolution-dependent shift: linear in the image's sequence length (diffusers' calculate_shift)."""
        slope = (self.max_shift - self.base_shift) / (self.max_seq_len - self.base_seq_len)
        return self.base_shift + slope * (seq_len - self.base_seq_len)

    def sample(self, batch: int, generator: torch.Generator | None, seq_len: int) -> torch.Tensor:
        """``batch`` values of σ in [0, 1] (float32, CPU)."""
        if self.name == "uniform":
            return torch.rand(batch, generator=generator)
        sigma = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(batch, generator=generator))
        if self.name == "shift":
            return self.shift * sigma / (1 + (self.shift - 1) * sigma)
        if self.name == "flux_shift":
            exp_mu = math.exp(self.mu(seq_len))
            return exp_mu / (exp_mu + (1 / sigma - 1))
        return sigma


def flow_sampler(options, family: str, scheduler_config: Any) -> FlowSampler:
    """The sampler of a run: ``options.timestep_sampling`` (``auto``: the family's published default)."""
    name = options.timestep_sampling
    if name in (None, "auto"):
        name = DEFAULT_SAMPLERS.get(family, "uniform")
    if name not in FLOW_SAMPLERS:
        raise TrainingError(f"--timestep-sampling {name!r} is not one of: auto, {', '.join(FLOW_SAMPLERS)}")
    config = dict(scheduler_config)
    shift = options.discrete_flow_shift if options.discrete_flow_shift is not None else config.get("shift", 3.0)
    return FlowSampler(
        name, float(options.logit_mean), float(options.logit_std), float(shift),
        float(config.get("base_shift") or 0.5), float(config.get("max_shift") or 1.15),
        int(config.get("base_image_seq_len") or 256), int(config.get("max_image_seq_len") or 4096),
    )  # fmt: skip


def flow_noised(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(noisy, target)``: ``(1 - σ)·x0 + σ·ε`` and the velocity ``ε - x0``, σ per example."""
    s = sigmas.to(latents.device, latents.dtype).view(-1, *([1] * (latents.ndim - 1)))
    return (1 - s) * latents + s * noise, noise - latents


def loss_weights(weighting: str, sigmas: torch.Tensor) -> torch.Tensor | None:
    """The SD3 paper's loss weights per example (diffusers' compute_loss_weighting_for_sd3); ``None`` for none."""
    if weighting == "none":
        return None
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    return compute_loss_weighting_for_sd3(weighting, sigmas.clamp_min(MIN_WEIGHT_SIGMA)).float()


class FlowObjective:
    """Rectified flow: σ from the sampler (or fixed timesteps / 1000), velocity target, optional SD3 weighting."""

    kind = "flow"

    def __init__(self, sampler: FlowSampler, weighting: str = "none", num_train_timesteps: int = 1000):
        self.sampler, self.weighting, self.steps = sampler, weighting, num_train_timesteps

    def draw_timesteps(self, generator: torch.Generator, seq_len: int) -> torch.Tensor:
        """One example's timestep (σ·1000) drawn from ``generator``: what ``noised`` takes as ``timesteps``."""
        return self.sampler.sample(1, generator, seq_len) * self.steps

    def noised(self, latents, noise, generator, seq_len: int, timesteps: torch.Tensor | None = None) -> Noised:
        if timesteps is None:
            sigmas = self.sampler.sample(latents.shape[0], generator, seq_len)
        else:
            sigmas = timesteps.float() / self.steps
        noisy, target = flow_noised(latents, noise, sigmas)
        weights = loss_weights(self.weighting, sigmas)
        return Noised(noisy, target, (sigmas * self.steps).to(latents.device), weights)


class DiffusionObjective:
    """DDPM: integer timesteps, the scheduler's noising, an epsilon or v target, optional Min-SNR weights."""

    kind = "diffusion"

    def __init__(self, scheduler, prediction: str, min_snr_gamma: float = 0.0):
        self.scheduler, self.prediction, self.min_snr_gamma = scheduler, prediction, min_snr_gamma
        self.steps = scheduler.config.num_train_timesteps

    def draw_timesteps(self, generator: torch.Generator, seq_len: int) -> torch.Tensor:
        """One example's integer timestep drawn from ``generator``: what ``noised`` takes as ``timesteps``."""
        return torch.randint(0, self.steps, (1,), generator=generator)

    def noised(self, latents, noise, generator, seq_len: int, timesteps: torch.Tensor | None = None) -> Noised:
        if timesteps is None:
            timesteps = torch.randint(0, self.steps, (latents.shape[0],), generator=generator)
        timesteps = timesteps.to(latents.device).long()
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        target = noise if self.prediction == "epsilon" else self.scheduler.get_velocity(latents, noise, timesteps)
        weights = None
        if self.min_snr_gamma:
            from diffusers.training_utils import compute_snr

            snr = compute_snr(self.scheduler, timesteps)
            clipped = torch.clamp(snr, max=self.min_snr_gamma)
            weights = clipped / snr if self.prediction == "epsilon" else clipped / (snr + 1)
        return Noised(noisy, target, timesteps, weights)


def check_flow_options(options, family: str, flow: bool, given: set[str] | None = None) -> None:
    """The rules between the objective and the options, one line each: DDPM-only options on a flow base, flow-only
    options (when ``given`` says the user set them) on a DDPM base."""
    if flow:
        if options.prediction_type != "auto":
            raise TrainingError(f"--prediction-type {options.prediction_type} is for DDPM bases; this base "
                                f"({family}) trains with the flow-matching velocity target: leave it at "
                                "auto")  # fmt: skip
        if options.min_snr_gamma:
            raise TrainingError(f"--min-snr-gamma is DDPM's loss weighting; this base ({family}) trains with "
                                f"flow matching: use --loss-weighting {' or '.join(LOSS_WEIGHTINGS[1:])}")  # fmt: skip
        if options.resolution % 16:
            fit = max(16, options.resolution // 16 * 16)
            raise TrainingError(f"--resolution {options.resolution} must be a multiple of 16 on this base "
                                f"({family}: 8x VAE, 2x2 patches); try {fit}")  # fmt: skip
        return
    for name in sorted(set(given or ()) & set(FLOW_ONLY_OPTIONS)):
        raise TrainingError(f"--{name.replace('_', '-')} is for flow-matching bases (Flux, SD3); this base "
                            f"({family}) trains with the DDPM objective")  # fmt: skip


def make_objective(pipe, options) -> FlowObjective | DiffusionObjective:
    """The objective of the pipeline's family (``adapters.families``), configured from the run's options."""
    from lorastack.adapters.families import FAMILY_TABLE
    from lorastack.core.modules import pipeline_family

    family = pipeline_family(pipe)
    config = pipe.scheduler.config
    if FAMILY_TABLE[family].objective == "flow":
        check_flow_options(options, family, True)
        sampler = flow_sampler(options, family, config)
        return FlowObjective(sampler, options.loss_weighting, int(config.get("num_train_timesteps") or 1000))
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(config)
    prediction = scheduler.config.prediction_type if options.prediction_type == "auto" else options.prediction_type
    return DiffusionObjective(scheduler, prediction, options.min_snr_gamma)
