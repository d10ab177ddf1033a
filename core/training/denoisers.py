"""One training forward of each family's denoiser: the inputs its diffusers pipeline would give it.

UNet (SD1.x/SD2.x, SDXL's pooled embeddings and size/crop ids), FLUX.1 (latents packed into 2×2 patches, latent
image ids and zero text ids, the timestep as σ, the guidance input of guidance-distilled dev models; no CFG), and
SD3.x (latents as they are, the timestep as σ·1000, pooled projections). The packing helpers are diffusers' own
(``FluxPipeline._pack_latents`` and friends), so a trained LoRA sees exactly the layout it will be used with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .conditioning import time_ids


def image_seq_len(latents: torch.Tensor, patch: int = 2) -> int:
    """The image tokens the transformer sees: (h/2)·(w/2) latent patches (FLUX.1's flux_shift depends on it)."""
    return (latents.shape[-2] // patch) * (latents.shape[-1] // patch)


def predict(
    family: str,
    model: torch.nn.Module,
    noisy: torch.Tensor,
    timesteps: torch.Tensor,
    hidden: torch.Tensor,
    pooled: torch.Tensor | None,
    examples: Sequence[dict],
    *,
    guidance: float | None = None,
) -> torch.Tensor:
    """The denoiser's prediction for ``noisy`` (B×C×h×w, returned in the same layout); ``guidance``: the guidance
    input of a guidance-distilled FLUX.1 (``None`` for models without one)."""
    if family == "flux":
        return _flux(model, noisy, timesteps, hidden, pooled, guidance)
    if family == "sd3":
        return model(hidden_states=noisy.to(hidden.dtype), timestep=timesteps, encoder_hidden_states=hidden,
                     pooled_projections=pooled, return_dict=False)[0]  # fmt: skip
    kwargs = {}
    if pooled is not None:  # SDXL
        ids = time_ids([ex["original_size"] for ex in examples], [ex["crop_top_left"] for ex in examples],
                       [tuple(ex["pixels"].shape[-2:]) for ex in examples], noisy.device, hidden.dtype)  # fmt: skip
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": ids}
    return model(noisy, timesteps, hidden, **kwargs).sample


def _flux(model, noisy, timesteps, hidden, pooled, guidance: float | None) -> torch.Tensor:
    from diffusers import FluxPipeline

    batch, channels, height, width = noisy.shape
    packed = FluxPipeline._pack_latents(noisy, batch, channels, height, width).to(hidden.dtype)
    img_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, noisy.device, hidden.dtype)
    txt_ids = torch.zeros(hidden.shape[1], 3, device=noisy.device, dtype=hidden.dtype)
    guidance_input = torch.full((batch,), float(guidance), device=noisy.device) if guidance is not None else None
    out = model(hidden_states=packed, timestep=(timesteps / 1000).to(hidden.dtype), guidance=guidance_input,
                pooled_projections=pooled, encoder_hidden_states=hidden, txt_ids=txt_ids, img_ids=img_ids,
                return_dict=False)[0]  # fmt: skip
    # _unpack_latents takes the pixel size: the latent size times the VAE's factor (8)
    return FluxPipeline._unpack_latents(out, height * 8, width * 8, 8)
