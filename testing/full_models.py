"""Full-size FLUX.1 and SD3.x models with random weights, from the configs lorastack ships.

``device="meta"`` builds the shapes only (a second or so, no memory): enough to check converters, key layouts and
the shipped configs against diffusers' own checkpoint detection. On ``cpu`` the weights are real (FLUX.1's
transformer is 12 B parameters: 24 GB in bf16).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

#: The shipped transformer-base configs.
FULL_TRANSFORMER_CONFIGS = ("flux1-dev", "flux1-schnell", "sd3-medium", "sd3.5-medium", "sd3.5-large")


def transformer_config_dir(name: str) -> Path:
    """The shipped config folder of ``name`` (one of :data:`FULL_TRANSFORMER_CONFIGS`)."""
    from lorastack.core.transformer_bases import shipped_transformer_config

    if name not in FULL_TRANSFORMER_CONFIGS:
        raise ValueError(f"Unknown config {name!r}; choose one of {', '.join(FULL_TRANSFORMER_CONFIGS)}.")
    return shipped_transformer_config(name)


def transformer_config(name: str, component: str = "transformer") -> dict[str, Any]:
    """One component's shipped config (``transformer``, ``vae``, ``text_encoder``…, ``scheduler``)."""
    file = "scheduler_config.json" if component == "scheduler" else "config.json"
    return json.loads((transformer_config_dir(name) / component / file).read_text())


def build_full_transformer(
    name: str = "flux1-dev", seed: int = 0, device: str = "meta", dtype: torch.dtype = torch.bfloat16
):
    """The full-size ``FluxTransformer2DModel`` / ``SD3Transformer2DModel`` of a shipped config."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    config = {k: v for k, v in transformer_config(name).items() if not k.startswith("_")}
    cls = FluxTransformer2DModel if name.startswith("flux") else SD3Transformer2DModel
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls(**config)
    # nn.Module.to: diffusers' own .to() warns about fp32 modules these models do not have
    return torch.nn.Module.to(model, dtype).eval()


def build_full_component(name: str, component: str, seed: int = 0, device: str = "meta"):
    """A full-size text encoder (CLIP-L, CLIP-G, T5 v1.1 XXL) or VAE of a shipped config."""
    import diffusers
    import transformers

    index = json.loads((transformer_config_dir(name) / "model_index.json").read_text())
    library, class_name = index[component]
    folder = str(transformer_config_dir(name))
    torch.manual_seed(seed)
    with torch.device(device):
        if library == "diffusers":
            cls = getattr(diffusers, class_name)
            return cls.from_config(cls.load_config(folder, subfolder=component)).eval()
        cls = getattr(transformers, class_name)
        return cls(cls.config_class.from_pretrained(folder, subfolder=component)).eval()
