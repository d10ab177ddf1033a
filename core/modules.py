"""Where canonical module names live in a diffusers pipeline, and which family a pipeline is."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorastack.adapters.naming import COMPONENTS, normalize_text_encoder_path

PATCHABLE = (torch.nn.Linear, torch.nn.Conv2d)
#: The pipeline attributes a denoiser may have (UNet families, transformer families).
DENOISERS = ("unet", "transformer")


def denoiser(pipe) -> torch.nn.Module:
    """The pipeline's denoiser: its transformer (Flux, SD3) or its UNet."""
    model = getattr(pipe, "transformer", None)
    return model if model is not None else pipe.unet


def block_counts(pipe) -> dict[str, int]:
    """Blocks per group of a transformer base (``{"double": 19, "single": 38}`` for FLUX.1), read from the model's
    config; ``{}`` for the UNet families."""
    from lorastack.adapters.families import FAMILY_TABLE

    fam = FAMILY_TABLE.get(pipeline_family(pipe))
    if fam is None or not fam.transformer:
        return {}
    config = pipe.transformer.config
    return {g.name: int(config.get(g.count_key) or 0) for g in fam.blocks}


def pipeline_family(pipe) -> str:
    """``"sd1"``, ``"sd2"``, ``"sdxl"``, ``"flux"`` or ``"sd3"`` from the denoiser's class and config (works for
    full-size and tiny models alike)."""
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None:
        name = type(transformer).__name__
        if name.startswith("Flux"):
            return "flux"
        if name.startswith("SD3"):
            return "sd3"
        from .errors import BaseModelError

        raise BaseModelError(f"a {name} denoiser is of no family lorastack knows (sd1, sd2, sdxl, flux, sd3)")
    config = pipe.unet.config
    if config.get("addition_embed_type") == "text_time" or getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    if config.get("cross_attention_dim") == 1024 or config.get("use_linear_projection"):
        return "sd2"
    return "sd1"


@dataclass(frozen=True)
class Target:
    """A patchable module of the pipeline."""

    name: str
    module: torch.nn.Module

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight


class ModuleIndex:
    """Canonical module name → the ``nn.Linear``/``nn.Conv2d`` that holds its weight. Built once per pipeline."""

    def __init__(self, pipe):
        self._targets: dict[str, Target] = {}
        for component in COMPONENTS:
            model = getattr(pipe, component, None)
            if model is None:
                continue
            for name, module in model.named_modules():
                if ".base_layer" in name or "lora_" in name:
                    continue
                module = getattr(module, "base_layer", module)  # a peft wrapper: patch the layer it wraps
                if isinstance(module, PATCHABLE):
                    path = name if component in DENOISERS else normalize_text_encoder_path(name)
                    self._targets[f"{component}.{path}"] = Target(f"{component}.{path}", module)

    def get(self, name: str) -> Target | None:
        return self._targets.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._targets

    def __len__(self) -> int:
        return len(self._targets)

    def names(self) -> list[str]:
        return list(self._targets)
