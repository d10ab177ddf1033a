"""Original key layouts of FLUX.1 and SD3.x parts → diffusers / Hugging Face names.

* Flux transformers (BFL keys): converted here. diffusers' own converter hard-codes FLUX.1's width (3072) when it
  splits a single block's fused ``linear1``; this one takes the width from the model config, so pruned and tiny
  models convert too (the tests check it against diffusers' at FLUX.1's width).
* SD3 transformers and VAEs: diffusers' converters, which read every size from the checkpoint or the config.
* CLIP and T5: already in Hugging Face's layout; only the ``text_model.`` level is adjusted to the model class and
  T5's tied embedding is filled in.

Every function works on meta tensors too: lorastack converts the header's shapes first and compares them with the
model's before any weight is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: BFL name → diffusers name, outside the blocks
_FLUX_TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
#: inside ``double_blocks.N.`` → inside ``transformer_blocks.N.`` (the fused q/k/v are split separately)
_FLUX_DOUBLE = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
#: inside ``single_blocks.N.`` → inside ``single_transformer_blocks.N.``
_FLUX_SINGLE = {
    "modulation.lin": "norm.linear",
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
    "linear2": "proj_out",
}


def swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    """The original final norms emit (shift, scale); diffusers' emit (scale, shift)."""
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def flux_to_diffusers(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A BFL-layout Flux transformer (no ``model.diffusion_model.`` prefix) → ``FluxTransformer2DModel`` names.

    Keys the mapping does not know are kept under their own name, so the caller's key check reports them.
    """
    inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module in _FLUX_TOP:
            out[f"{_FLUX_TOP[module]}.{param}"] = value
        elif key.startswith("final_layer.adaLN_modulation.1."):
            out[f"norm_out.linear.{param}"] = swap_halves(value)
        elif key.startswith("double_blocks."):
            _, index, rest = key.split(".", 2)
            dst = f"transformer_blocks.{index}."
            rest_module, _, rest_param = rest.rpartition(".")
            if rest_module in ("img_attn.qkv", "txt_attn.qkv"):
                names = (
                    ("to_q", "to_k", "to_v")
                    if rest_module == "img_attn.qkv"
                    else ("add_q_proj", "add_k_proj", "add_v_proj")
                )
                for name, chunk in zip(names, value.chunk(3, dim=0)):
                    out[f"{dst}attn.{name}.{rest_param}"] = chunk
            elif rest in _FLUX_DOUBLE:  # the norms' "scale" parameters map whole
                out[dst + _FLUX_DOUBLE[rest]] = value
            elif rest_module in _FLUX_DOUBLE:
                out[f"{dst}{_FLUX_DOUBLE[rest_module]}.{rest_param}"] = value
            else:
                out[key] = value
        elif key.startswith("single_blocks."):
            _, index, rest = key.split(".", 2)
            dst = f"single_transformer_blocks.{index}."
            rest_module, _, rest_param = rest.rpartition(".")
            if rest_module == "linear1":  # q, k, v and the MLP's input, fused; the MLP takes what is left
                sizes = (inner, inner, inner, value.shape[0] - 3 * inner)
                for name, chunk in zip(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), value.split(sizes)):
                    out[f"{dst}{name}.{rest_param}"] = chunk
            elif rest in _FLUX_SINGLE:
                out[dst + _FLUX_SINGLE[rest]] = value
            elif rest_module in _FLUX_SINGLE:
                out[f"{dst}{_FLUX_SINGLE[rest_module]}.{rest_param}"] = value
            else:
                out[key] = value
        else:
            out[key] = value
    return out


def sd3_to_diffusers(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """An MMDiT-layout SD3 transformer → ``SD3Transformer2DModel`` names (diffusers' converter; it pops from the
    dict it is given, so it gets a copy)."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    return convert_sd3_transformer_checkpoint_to_diffusers(dict(state))


def vae_to_diffusers(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """An LDM/BFL-layout VAE (``encoder.down.0.block.0…``) → ``AutoencoderKL`` names (diffusers' converter)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(dict(state), dict(config))


#: tensors some CLIP files carry that the loaded model has no place for (or rebuilds itself)
CLIP_IGNORED = ("logit_scale", "embeddings.position_ids", "text_model.embeddings.position_ids")


def clip_to_model(state: Mapping[str, torch.Tensor], nested: bool, projection: bool) -> dict[str, torch.Tensor]:
    """CLIP text-model keys for a model class with (``nested``) or without the ``text_model.`` level.

    ``projection``: the class has a ``text_projection``; a file without one (SD3's CLIP-L in bundled checkpoints)
    gets the identity, as the SD3 reference code pools CLIP-L unprojected.
    """
    out = {}
    for key, value in state.items():
        if key in CLIP_IGNORED:
            continue
        if key.startswith("text_projection"):
            if projection:
                out[key] = value
            continue
        bare = key.removeprefix("text_model.")
        out[f"text_model.{bare}" if nested else bare] = value
    if projection and "text_projection.weight" not in out:
        width = next(v.shape[-1] for k, v in out.items() if k.endswith("token_embedding.weight"))
        out["text_projection.weight"] = torch.eye(width, device=next(iter(out.values())).device)
    return out


def t5_to_model(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """T5 encoder keys with both names of its tied input embedding (files keep one of ``shared`` and
    ``encoder.embed_tokens``)."""
    out = dict(state)
    if "shared.weight" in out and "encoder.embed_tokens.weight" not in out:
        out["encoder.embed_tokens.weight"] = out["shared.weight"]
    elif "encoder.embed_tokens.weight" in out and "shared.weight" not in out:
        out["shared.weight"] = out["encoder.embed_tokens.weight"]
    return out
