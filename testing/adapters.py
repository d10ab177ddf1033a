"""Make adapter files for tests the way real tools make them.

* :func:`make_peft_lora` / :func:`save_diffusers_lora` go through peft (``add_adapter`` +
  ``get_peft_model_state_dict``) and diffusers' ``save_lora_weights``, like diffusers' training scripts.
* :func:`make_kohya_lora` writes kohya sd-scripts' key layout (``lora_unet_…``, ``lora_te_…``, ``.alpha``; SGM block
  names for SDXL) for every Linear and conv layer kohya's LoRA/LoCon targets.
* Flux/SD3 pipelines: :func:`make_original_lora` draws one random (fused) layer per module of the original layout
  and :func:`original_state_dict` spells it in a dialect (kohya, BFL, XLabs); :func:`original_deltas` computes
  the diffusers modules' deltas from the same matrices, independently of lorastack's reader
  (:mod:`lorastack.testing.transformer_adapters`).

Weights are random but seeded, and large enough to change images visibly.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _components(pipe, components: Iterable[str]) -> dict[str, torch.nn.Module]:
    out = {}
    for name in components:
        module = getattr(pipe, name, None)
        if module is None:
            raise ValueError(f"pipeline has no component {name!r}")
        out[name] = module
    return out


def make_peft_lora(
    pipe,
    components: Iterable[str] = ("unet",),
    rank: int = 4,
    alpha: float = 8.0,
    seed: int = 0,
    unet_targets: Iterable[str] = ATTENTION_TARGETS,
    text_targets: Iterable[str] = TEXT_ENCODER_TARGETS,
    use_dora: bool = False,
    std: float = 0.2,
) -> dict[str, tuple[dict, dict[str, torch.Tensor]]]:
    """Add a random peft LoRA to each component and return ``{component: (config dict, peft state dict)}``.

    The adapter is removed from the modules again afterwards; the pipeline is left as it was.
    """
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in _components(pipe, components).items():
        targets = list(unet_targets if name in ("unet", "transformer") else text_targets)
        config = LoraConfig(
            r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False, use_dora=use_dora
        )
        adapter_name = f"fixture_{seed}"
        module.add_adapter(config, adapter_name=adapter_name)
        with torch.no_grad():
            for pname, p in module.named_parameters():
                if f".{adapter_name}" in pname and ("lora_A" in pname or "lora_B" in pname):
                    p.copy_(torch.randn(p.shape, generator=g) * std)
                elif f"lora_magnitude_vector.{adapter_name}" in pname:
                    p.mul_(1.0 + 0.1 * torch.rand(p.shape, generator=g))
        state = get_peft_model_state_dict(module, adapter_name=adapter_name)
        out[name] = (config.to_dict(), {k: v.detach().clone() for k, v in state.items()})
        _remove_adapter(module, adapter_name)
    return out


def _remove_adapter(module, adapter_name: str) -> None:
    if hasattr(module, "delete_adapters"):
        module.delete_adapters([adapter_name])
    else:  # transformers models
        module.delete_adapter(adapter_name)
    from peft.tuners.tuners_utils import BaseTunerLayer

    # Unwrap the now-empty peft layers so the module is structurally pristine again.
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer) and not child.lora_A:
                setattr(parent, child_name, child.get_base_layer())
    if hasattr(module, "peft_config") and not module.peft_config:
        del module.peft_config
    module._hf_peft_config_loaded = False


def save_diffusers_lora(
    pipe,
    path: str | Path,
    parts: dict[str, tuple[dict, dict[str, torch.Tensor]]],
    with_metadata: bool = True,
    style: str = "peft",
) -> Path:
    """Save ``make_peft_lora`` output with diffusers' ``save_lora_weights``.

    ``style="peft"`` keeps ``lora_A``/``lora_B`` keys; ``"diffusers"`` converts them with
    ``convert_state_dict_to_diffusers`` (``lora.down``/``lora.up``), as diffusers' training scripts do.
    """
    from diffusers.utils import convert_state_dict_to_diffusers

    path = Path(path)
    kwargs = {}
    for component, (config, state) in parts.items():
        if style == "diffusers":
            state = convert_state_dict_to_diffusers(state)
        kwargs[f"{component}_lora_layers"] = state
        if with_metadata:
            kwargs[f"{component}_lora_adapter_metadata"] = config
    type(pipe).save_lora_weights(str(path.parent), weight_name=path.name, **kwargs)
    return path


def kohya_target_modules(pipe, components: Iterable[str] = ("unet", "text_encoder"), conv: bool = False):
    """``(component, module path, module)`` for every layer kohya's LoRA (``conv``: LoCon) trains."""
    for comp, module in _components(pipe, components).items():
        for name, m in module.named_modules():
            if comp == "unet":
                in_attention = ".attentions." in name
                is_linear = isinstance(m, torch.nn.Linear)
                is_conv = isinstance(m, torch.nn.Conv2d)
                if in_attention and (is_linear or (is_conv and m.kernel_size == (1, 1))):
                    yield comp, name, m
                elif conv and (is_conv or is_linear) and (".resnets." in name or "samplers." in name):
                    # LoCon adds the resnets (conv1/conv2/conv_shortcut/time_emb_proj) and down/upsamplers
                    yield comp, name, m
            elif isinstance(m, torch.nn.Linear) and ".layers." in name:
                yield comp, name, m


def make_kohya_lora(
    pipe,
    components: Iterable[str] = ("unet", "text_encoder"),
    rank: int = 4,
    alpha: float = 2.0,
    seed: int = 0,
    conv: bool = False,
    sgm: bool | None = None,
    std: float = 0.2,
) -> dict[str, torch.Tensor]:
    """A kohya-format LoRA state dict over :func:`kohya_target_modules`. SDXL pipelines get SGM UNet names."""
    from lorastack.adapters.naming import diffusers_to_sgm

    if sgm is None:
        sgm = hasattr(pipe, "text_encoder_2")
    g = torch.Generator().manual_seed(seed)
    numbered = hasattr(pipe, "text_encoder_2")
    sd: dict[str, torch.Tensor] = {}
    for comp, name, m in kohya_target_modules(pipe, components, conv=conv):
        if comp == "unet":
            path = diffusers_to_sgm(name) if sgm else name
            key = "lora_unet_" + path.replace(".", "_")
        else:
            path = name if name.startswith("text_model.") else "text_model." + name
            prefix = {"text_encoder": "lora_te1_" if numbered else "lora_te_", "text_encoder_2": "lora_te2_"}[comp]
            key = prefix + path.replace(".", "_")
        if isinstance(m, torch.nn.Linear):
            down = torch.randn(rank, m.in_features, generator=g) * std
            up = torch.randn(m.out_features, rank, generator=g) * std
        else:
            down = torch.randn(rank, m.in_channels, *m.kernel_size, generator=g) * std
            up = torch.randn(m.out_channels, rank, 1, 1, generator=g) * std
        sd[key + ".lora_down.weight"] = down
        sd[key + ".lora_up.weight"] = up
        sd[key + ".alpha"] = torch.tensor(float(alpha))
    return sd


def module_weights(pipe, components: Iterable[str] = ("unet", "text_encoder", "text_encoder_2")):
    """``{canonical module name: weight clone}`` for every Linear/Conv2d (base layers under peft wrappers)."""
    from lorastack.adapters.naming import normalize_text_encoder_path

    out = {}
    for comp in components:
        module = getattr(pipe, comp, None)
        if module is None:
            continue
        for name, m in module.named_modules():
            canonical = f"{comp}.{name if comp == 'unet' else normalize_text_encoder_path(name)}"
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and "lora_" not in name and "base_layer" not in name:
                out[canonical] = m.weight.detach().clone()
            elif hasattr(m, "base_layer") and isinstance(m.base_layer, (torch.nn.Linear, torch.nn.Conv2d)):
                out[canonical] = m.base_layer.weight.detach().clone()
    return out


#: peft targets covering every Linear of the Flux/SD3 transformer blocks and the final layer.
TRANSFORMER_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "proj_mlp",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "norm1.linear",
    "norm1_context.linear",
    "norm.linear",
    "norm_out.linear",
)
T5_TARGETS = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
