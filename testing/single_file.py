"""Write a diffusers pipeline as an original-layout ("LDM") single-file checkpoint, the way civitai ships them.

diffusers reads such files (``from_single_file``) but ships no writer, and its conversion script hard-codes the
full-size block counts; this one works for any ``layers_per_block``, level count and attention placement, so the
tiny test models can be written as single files too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lorastack.adapters.naming import diffusers_to_sgm

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD_TEXT_PREFIX = "cond_stage_model.transformer."
SDXL_TEXT_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """UNet parameters with diffusers names → original (SGM/LDM) names, without the ``model.diffusion_model.``."""
    lpb = config["layers_per_block"]
    with_attention = {i for i, t in enumerate(config["up_block_types"]) if "CrossAttn" in t}
    out = {}
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        mapped = diffusers_to_sgm(module, lpb, with_attention)
        if mapped is None:
            raise KeyError(f"no original-layout name for UNet parameter {key}")
        out[f"{mapped}.{param}"] = value
    return out


def vae_to_ldm(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """VAE parameters with diffusers names → original names (attention projections become 1×1 convs)."""
    n = len(config["block_out_channels"])
    out = {}
    for key, value in state_dict.items():
        k = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        for i in range(n):
            k = k.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            k = k.replace(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            k = k.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block.")
            k = k.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample.")
        k = k.replace("mid_block.resnets.0.", "mid.block_1.").replace("mid_block.resnets.1.", "mid.block_2.")
        if "mid_block.attentions.0." in k:
            k = k.replace("mid_block.attentions.0.", "mid.attn_1.")
            k = k.replace("group_norm.", "norm.").replace("to_q.", "q.").replace("to_k.", "k.").replace("to_v.", "v.")
            k = k.replace("to_out.0.", "proj_out.")
            if value.ndim == 2:
                value = value[:, :, None, None]
        out[k] = value
    return out


def clip_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF CLIP text-model parameters with the ``text_model.`` level the original layout expects."""
    return {
        (k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}"): v
        for k, v in state_dict.items()
    }


def open_clip_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An HF ``CLIPTextModelWithProjection`` → OpenCLIP's layout (SDXL's second text encoder in single files)."""
    sd = {k[len("text_model.") :] if k.startswith("text_model.") else k: v for k, v in state_dict.items()}
    out = {
        "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        "positional_embedding": sd["embeddings.position_embedding.weight"],
        "ln_final.weight": sd["final_layer_norm.weight"],
        "ln_final.bias": sd["final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].T.contiguous(),
    }
    layer = 0
    while f"encoder.layers.{layer}.self_attn.q_proj.weight" in sd:
        src, dst = f"encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        qkv = [sd[f"{src}self_attn.{p}_proj.weight"] for p in "qkv"]
        qkv_b = [sd[f"{src}self_attn.{p}_proj.bias"] for p in "qkv"]
        out[f"{dst}attn.in_proj_weight"] = torch.cat(qkv)
        out[f"{dst}attn.in_proj_bias"] = torch.cat(qkv_b)
        pairs = {
            "self_attn.out_proj": "attn.out_proj",
            "layer_norm1": "ln_1",
            "layer_norm2": "ln_2",
            "mlp.fc1": "mlp.c_fc",
            "mlp.fc2": "mlp.c_proj",
        }
        for a, b in pairs.items():
            out[f"{dst}{b}.weight"] = sd[f"{src}{a}.weight"]
            out[f"{dst}{b}.bias"] = sd[f"{src}{a}.bias"]
        layer += 1
    return out


def pipeline_to_ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """The whole pipeline (UNet, VAE, text encoder(s)) as one original-layout state dict."""
    sd = {UNET_PREFIX + k: v for k, v in unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config).items()}
    sd.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config).items()})
    if getattr(pipe, "text_encoder_2", None) is not None:
        sd.update({SDXL_TEXT_PREFIX + k: v for k, v in clip_to_ldm(pipe.text_encoder.state_dict()).items()})
        sd.update(
            {SDXL_OPEN_CLIP_PREFIX + k: v for k, v in open_clip_to_ldm(pipe.text_encoder_2.state_dict()).items()}
        )
    else:
        sd.update({SD_TEXT_PREFIX + k: v for k, v in clip_to_ldm(pipe.text_encoder.state_dict()).items()})
    return {k: v.detach().contiguous() for k, v in sd.items()}


def save_single_file(pipe, path: str | Path) -> Path:
    """Save ``pipe`` as one original-layout ``.safetensors`` checkpoint."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file(pipeline_to_ldm_state_dict(pipe), str(path))
    return path
