"""Inputs and outputs for apply-mode tests: one denoiser and text-encoder forward of a tiny pipeline."""

from __future__ import annotations

import torch

from lorastack.adapters import Adapter, LoRALayer
from lorastack.core.modules import ModuleIndex


def sd_outputs(pipe, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The text encoder's hidden states for a prompt and one UNet forward on them (no scheduler, no VAE)."""
    ids = pipe.tokenizer(["a photo of a red cat"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, pipe.unet.config.in_channels, 8, 8, generator=g)
    with torch.no_grad():
        hidden = pipe.text_encoder(ids)[0].float()
        out = pipe.unet(sample, 10, encoder_hidden_states=hidden.to(pipe.unet.dtype)).sample.float()
    return hidden, out


def flux_output(pipe, seed: int = 0) -> torch.Tensor:
    """One Flux transformer forward on random packed latents and text states."""
    cfg = pipe.transformer.config
    g = torch.Generator().manual_seed(seed)
    tokens, text = 16, 8
    kwargs = dict(
        hidden_states=torch.randn(1, tokens, cfg.in_channels, generator=g),
        encoder_hidden_states=torch.randn(1, text, cfg.joint_attention_dim, generator=g),
        pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g),
        timestep=torch.tensor([0.5]),
        img_ids=torch.zeros(tokens, 3),
        txt_ids=torch.zeros(text, 3),
        guidance=torch.tensor([3.5]) if cfg.guidance_embeds else None,
    )
    compute = (torch.float32, torch.float16, torch.bfloat16)  # an fp8-stored or GGUF model computes in another
    dtype = next((p.dtype for p in pipe.transformer.parameters() if p.dtype in compute), torch.float32)
    kwargs = {k: (v.to(dtype) if k in ("hidden_states", "encoder_hidden_states", "pooled_projections") else v)
              for k, v in kwargs.items()}  # fmt: skip
    with torch.no_grad():
        return pipe.transformer(**kwargs).sample.float()


def tucker_locon(pipe, seed: int = 0, rank: int = 2) -> Adapter:
    """A LoCon with a Tucker core (LyCORIS ``lora_mid``) on every 3×3 UNet convolution."""
    g = torch.Generator().manual_seed(seed)
    layers = {}
    index = ModuleIndex(pipe)
    for name in index.names():
        module = index.get(name).module
        if isinstance(module, torch.nn.Conv2d) and module.kernel_size == (3, 3):
            layers[name] = LoRALayer(
                torch.randn(rank, module.in_channels, 1, 1, generator=g) * 0.2,
                torch.randn(module.out_channels, rank, 1, 1, generator=g) * 0.2,
                mid=torch.randn(rank, rank, 3, 3, generator=g) * 0.2,
                alpha=1.0,
            )
    return Adapter(layers)


def sd3_output(pipe, seed: int = 0) -> torch.Tensor:
    """One SD3 transformer forward on random latents and text states."""
    cfg = pipe.transformer.config
    g = torch.Generator().manual_seed(seed)
    compute = (torch.float32, torch.float16, torch.bfloat16)
    dtype = next((p.dtype for p in pipe.transformer.parameters() if p.dtype in compute), torch.float32)
    kwargs = dict(
        hidden_states=torch.randn(1, cfg.in_channels, 8, 8, generator=g).to(dtype),
        encoder_hidden_states=torch.randn(1, 8, cfg.joint_attention_dim, generator=g).to(dtype),
        pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g).to(dtype),
        timestep=torch.tensor([500.0]),
    )
    with torch.no_grad():
        return pipe.transformer(**kwargs).sample.float()
