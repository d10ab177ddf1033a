"""LoRA files for the tiny Flux and SD3 pipelines, made the way diffusers' training scripts make them."""

from __future__ import annotations

from pathlib import Path

import torch

#: Modules diffusers' Flux/SD3 scripts train (attention, its added projections, feed-forwards, single-block MLPs).
TARGETS = (
    *("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
    *("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out"),
)


def peft_lora_file(pipe, path: Path, seed: int = 0, rank: int = 4, alpha: float = 8.0, targets=TARGETS,
                   exclude: str | None = None, text_encoder: bool = False) -> Path:  # fmt: skip
    """A random LoRA on ``pipe``'s transformer (and CLIP-L with ``text_encoder``), saved with ``save_lora_weights``
    and its adapter metadata, as peft/diffusers trainers write it. ``exclude``: a module-path regex left out."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False,
                        exclude_modules=exclude)  # fmt: skip
    torch.manual_seed(seed)
    pipe.transformer.add_adapter(config, adapter_name="made")
    layers = get_peft_model_state_dict(pipe.transformer, adapter_name="made")
    kwargs = {"transformer_lora_layers": layers, "transformer_lora_adapter_metadata": config.to_dict()}
    if text_encoder:
        te_config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
                               init_lora_weights=False)  # fmt: skip
        pipe.text_encoder.add_adapter(te_config, adapter_name="made")
        kwargs["text_encoder_lora_layers"] = get_peft_model_state_dict(pipe.text_encoder, adapter_name="made")
        kwargs["text_encoder_lora_adapter_metadata"] = te_config.to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(str(path.parent), weight_name=path.name, **kwargs)
    pipe.transformer.delete_adapters("made")
    if text_encoder:
        pipe.text_encoder.delete_adapter("made")
    return path


def latents(pipe, prompt: str = "a photo of a red cat", seed: int = 0) -> torch.Tensor:
    """Two denoising steps at 64 px, as latents (exact comparisons need no VAE decode)."""
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=2, height=64, width=64, generator=g, output_type="latent",
                max_sequence_length=32).images  # fmt: skip


def module_weights(pipe) -> dict[str, torch.Tensor]:
    """A copy of every patchable weight (transformer, UNet and text encoders alike), by canonical name."""
    from lorastack.core.modules import ModuleIndex

    index = ModuleIndex(pipe)
    return {name: index.get(name).weight.detach().clone() for name in index.names()}
