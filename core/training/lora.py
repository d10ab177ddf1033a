"""LoRA layers for training (peft, the way diffusers' own training scripts add them) and their export to a file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .options import TARGETS, TEXT_TARGETS, TrainingError

ADAPTER_NAME = "default"
TEXT_COMPONENTS = ("text_encoder", "text_encoder_2")


def add_lora(pipe, options: Mapping[str, Any]) -> dict[str, torch.nn.Module]:
    """Freeze the pipeline and add trainable LoRA layers; return the modules that now train, by component name.

    The LoRA down matrices are initialised from ``seed`` (peft's default init: Kaiming A, zero B), so a run is
    reproducible from its recipe.
    """
    from peft import LoraConfig

    for component in ("unet", "vae", *TEXT_COMPONENTS):
        module = getattr(pipe, component, None)
        if module is not None:
            module.requires_grad_(False)
    torch.manual_seed(options.seed)
    config = dict(r=options.rank, lora_alpha=options.alpha, init_lora_weights=True)
    trained = {}
    try:
        pipe.unet.add_adapter(LoraConfig(target_modules=list(TARGETS[options.targets]), **config))
    except ValueError as e:
        raise TrainingError(f"cannot add LoRA layers to the UNet: {e}") from None
    trained["unet"] = pipe.unet
    if options.text_encoder_lr > 0:
        for component in TEXT_COMPONENTS:
            encoder = getattr(pipe, component, None)
            if encoder is not None:
                encoder.add_adapter(LoraConfig(target_modules=list(TEXT_TARGETS), **config))
                trained[component] = encoder
    for module in trained.values():  # LoRA weights train in fp32 whatever the base's dtype (no fp16 unscale errors)
        for p in module.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return trained


def trainable_parameters(trained: Mapping[str, torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    """``component.parameter name`` → parameter, for every parameter that trains (stable order)."""
    return {
        f"{component}.{name}": p
        for component, module in trained.items()
        for name, p in module.named_parameters()
        if p.requires_grad
    }


def export_adapter(trained: Mapping[str, torch.nn.Module], alpha: float, header: Mapping[str, str]):
    """The trained LoRA as a lorastack ``Adapter`` (canonical form), ready for any writer."""
    from peft.utils import get_peft_model_state_dict

    from lorastack.adapters.reading import parse_state_dict

    tensors = {}
    for component, module in trained.items():
        # new tokens travel as bundled embeddings, never as a copy of the whole (resized) embedding matrix
        state = get_peft_model_state_dict(module, adapter_name=ADAPTER_NAME, save_embedding_layers=False)
        for key, value in state.items():
            tensors[f"{component}.{key}"] = value.detach().to("cpu", torch.float32).clone()
    adapter = parse_state_dict(tensors, dict(header))
    for layer in adapter.layers.values():
        layer.alpha = float(alpha)
    return adapter


def remove_lora(trained: Mapping[str, torch.nn.Module]) -> None:
    """Take the LoRA layers off again (the pipeline is the base model afterwards)."""
    for module in trained.values():
        if hasattr(module, "delete_adapters"):
            module.delete_adapters([ADAPTER_NAME])
        else:
            module.delete_adapter(ADAPTER_NAME)
