"""LoRA layers for training (peft, the way diffusers' own training scripts add them) and their export to a file.

Which modules train is data too: the UNet families use peft target suffixes (``TARGETS``); the transformer families
(Flux, SD3) name their modules once per block type (``TRANSFORMER_TARGETS``), matched inside the family's block
groups only, so a single block's ``proj_out`` trains and the model's final ``proj_out`` does not. Text encoders get
LoRA only where they are CLIP models: T5 stays frozen, as in diffusers' Flux and SD3 scripts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .options import TARGETS, TEXT_TARGETS, TrainingError

ADAPTER_NAME = "default"
#: every pipeline component training may freeze or move
MODEL_COMPONENTS = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
#: module-name suffixes inside the transformer blocks: the double/joint blocks' attention (SD3.5's second attention
#: too) and, with -ff, their image and text feed-forwards and the single blocks' MLP and output projections, as
#: diffusers' train_dreambooth_lora_flux.py --lora_layers names them
_ATTENTION_TARGETS = tuple(f"{a}.{m}" for a in ("attn", "attn2") for m in _ATTENTION)
TRANSFORMER_TARGETS = {
    "attention": _ATTENTION_TARGETS,
    "attention-ff": (*_ATTENTION_TARGETS, "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
                     "proj_mlp", "proj_out"),
}  # fmt: skip


def text_components(pipe) -> tuple[str, ...]:
    """The pipeline's CLIP text encoders, which LoRA and new tokens may train (T5 never does)."""
    from lorastack.adapters.families import FAMILY_TABLE
    from lorastack.core.modules import pipeline_family

    fam = FAMILY_TABLE[pipeline_family(pipe)]
    return tuple(
        c for c, kind in zip(fam.text_encoders, fam.text_encoder_kinds)
        if kind != "t5" and getattr(pipe, c, None) is not None
    )  # fmt: skip


def denoiser_name(pipe) -> str:
    """``"transformer"`` for Flux and SD3, ``"unet"`` for the others."""
    return "transformer" if getattr(pipe, "transformer", None) is not None else "unet"


def _linear_names(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def _suffix_match(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def denoiser_targets(pipe, options) -> list[str]:
    """The peft ``target_modules`` of the denoiser: ``--lora-layers`` when given, else the ``--targets`` group."""
    name = denoiser_name(pipe)
    model = getattr(pipe, name)
    chosen = [s.strip() for s in (options.lora_layers or "").split(",") if s.strip()]
    if chosen:
        linears = _linear_names(model) if name == "transformer" else [n for n, _ in model.named_modules()]
        for suffix in chosen:
            if not any(_suffix_match(n, suffix) for n in linears):
                examples = "attn.to_q, attn.add_k_proj, ff.net.2, proj_mlp" if name == "transformer" else (
                    "to_q, to_k, to_v, to_out.0, ff.net.2")  # fmt: skip
                raise TrainingError(f"--lora-layers {suffix!r} names no layer of the {name}; valid names are module "
                                    f"name suffixes such as {examples}")  # fmt: skip
        if name == "unet":
            return chosen
        return sorted(n for n in linears if any(_suffix_match(n, s) for s in chosen))
    if name == "unet":
        return list(TARGETS[options.targets])
    if options.targets == "all":
        return _linear_names(model)  # embedders, modulations and the final layer too
    from lorastack.adapters.families import FAMILY_TABLE
    from lorastack.core.modules import pipeline_family

    groups = tuple(g.path + "." for g in FAMILY_TABLE[pipeline_family(pipe)].blocks)
    suffixes = TRANSFORMER_TARGETS[options.targets]
    return [n for n in _linear_names(model) if n.startswith(groups) and any(_suffix_match(n, s) for s in suffixes)]


def add_lora(pipe, options: Mapping[str, Any]) -> dict[str, torch.nn.Module]:
    """Freeze the pipeline and add trainable LoRA layers; return the modules that now train, by component name.

    The LoRA down matrices are initialised from ``seed`` (peft's default init: Kaiming A, zero B), so a run is
    reproducible from its recipe.
    """
    from peft import LoraConfig

    for component in MODEL_COMPONENTS:
        module = getattr(pipe, component, None)
        if module is not None:
            module.requires_grad_(False)
    torch.manual_seed(options.seed)
    config = dict(r=options.rank, lora_alpha=options.alpha, init_lora_weights=True)
    trained = {}
    name = denoiser_name(pipe)
    model = getattr(pipe, name)
    try:
        model.add_adapter(LoraConfig(target_modules=denoiser_targets(pipe, options), **config))
    except ValueError as e:
        raise TrainingError(f"cannot add LoRA layers to the {name}: {e}") from None
    trained[name] = model
    if options.text_encoder_lr > 0:
        for component in text_components(pipe):
            encoder = getattr(pipe, component)
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


def export_adapter(trained: Mapping[str, torch.nn.Module], alpha: float, header: Mapping[str, str], states=None):
    """The trained LoRA as a lorastack ``Adapter`` (canonical form), ready for any writer. ``states``: component →
    its trained tensors by parameter name, whole (a sharded run's modules hold shards of them).

    Every trained tensor must be in it: a key the reader does not place is an error here, not a layer missing
    from the saved file.
    """
    from peft.utils import get_peft_model_state_dict

    from lorastack.adapters.reading import parse_state_dict

    tensors = {}
    for component, module in trained.items():
        # new tokens travel as bundled embeddings, never as a copy of the whole (resized) embedding matrix
        given = None if states is None else states.get(component, {})
        state = get_peft_model_state_dict(module, given, adapter_name=ADAPTER_NAME, save_embedding_layers=False)
        for key, value in state.items():
            tensors[f"{component}.{key}"] = value.detach().to("cpu", torch.float32).clone()
    adapter = parse_state_dict(tensors, dict(header))
    if adapter.unrecognized_keys:
        first, count = adapter.unrecognized_keys[0], len(adapter.unrecognized_keys)
        raise TrainingError(f"the trained layer {first!r} has no place in an adapter file ({count} keys in all); "
                            "the adapter was not written")  # fmt: skip
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
