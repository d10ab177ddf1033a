"""Small real adapter files and temporary registries, for tests of the registry and of plugins that use it."""

from __future__ import annotations

from pathlib import Path

import torch

#: A few SD1.5 module names (kohya spelling) at their real widths, so the files probe as SD 1.x.
_SD15_LAYERS = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (768, 320),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v": (768, 320),
    "lora_unet_down_blocks_0_attentions_0_proj_in": (320, 320),
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
}


def small_adapter(path: str | Path, seed: int = 0, rank: int = 2, trigger: str | None = None, **header: str) -> Path:
    """Write a small kohya-format SD1.5 LoRA (~20 KB; the same bytes for the same arguments) with ModelSpec
    metadata."""
    from lorastack.adapters.files import serialize_safetensors

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (n_in, n_out) in _SD15_LAYERS.items():
        shape_down = (rank, n_in, 1, 1) if name.endswith("proj_in") else (rank, n_in)
        shape_up = (n_out, rank, 1, 1) if name.endswith("proj_in") else (n_out, rank)
        tensors[f"{name}.lora_down.weight"] = (torch.randn(*shape_down, generator=g) * 0.1).half()
        tensors[f"{name}.lora_up.weight"] = (torch.randn(*shape_up, generator=g) * 0.1).half()
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    metadata = {"modelspec.title": Path(path).stem, "modelspec.architecture": "stable-diffusion-v1/lora", **header}
    if trigger:
        metadata["modelspec.trigger_phrase"] = trigger
    path = Path(path)
    path.write_bytes(serialize_safetensors(tensors, metadata))
    return path
