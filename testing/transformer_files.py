"""Write FLUX.1 and SD3.x pipelines as the single files people download, in the original key layouts.

The inverse of diffusers' single-file converters (``convert_flux_transformer_checkpoint_to_diffusers``,
``convert_sd3_transformer_checkpoint_to_diffusers``, ``convert_ldm_vae_checkpoint``), for any size, so tiny test
models can be written as ``flux1-dev.safetensors`` + ``clip_l.safetensors`` + ``t5xxl.safetensors`` +
``ae.safetensors``, or as one ComfyUI-style bundled checkpoint; optionally stored as fp8 (``float8_e4m3fn``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from .single_file import vae_to_ldm

TRANSFORMER_PREFIX = "model.diffusion_model."
#: ComfyUI's bundle prefixes per pipeline attribute; the VAE sits under "vae." in Flux bundles
BUNDLE_PREFIXES = {
    "flux": {
        "text_encoder": "text_encoders.clip_l.transformer.",
        "text_encoder_2": "text_encoders.t5xxl.transformer.",
        "vae": "vae.",
    },
    "sd3": {
        "text_encoder": "text_encoders.clip_l.transformer.",
        "text_encoder_2": "text_encoders.clip_g.transformer.",
        "text_encoder_3": "text_encoders.t5xxl.transformer.",
        "vae": "first_stage_model.",
    },
}
#: the file names the parts are usually downloaded as
FILE_NAMES = {
    "flux": {"text_encoder": "clip_l", "text_encoder_2": "t5xxl", "vae": "ae"},
    "sd3": {"text_encoder": "clip_l", "text_encoder_2": "clip_g", "text_encoder_3": "t5xxl", "vae": "vae"},
}
FP8 = torch.float8_e4m3fn


def _swap(tensor: torch.Tensor) -> torch.Tensor:
    scale, shift = tensor.chunk(2, dim=0)
    return torch.cat([shift, scale], dim=0)


def flux_to_bfl(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``FluxTransformer2DModel`` parameters → BFL names (``double_blocks.0.img_attn.qkv.weight``…)."""
    sd = dict(state)
    out: dict[str, torch.Tensor] = {}
    top = {
        "x_embedder": "img_in",
        "context_embedder": "txt_in",
        "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
        "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
        "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
        "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
        "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
        "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
        "proj_out": "final_layer.linear",
    }
    for src, dst in top.items():
        for p in ("weight", "bias"):
            if f"{src}.{p}" in sd:
                out[f"{dst}.{p}"] = sd.pop(f"{src}.{p}")
    for p in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{p}"] = _swap(sd.pop(f"norm_out.linear.{p}"))
    i = 0
    while f"transformer_blocks.{i}.attn.to_q.weight" in sd:
        s, d = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{d}img_attn.qkv.{p}"] = torch.cat([sd.pop(f"{s}attn.to_{x}.{p}") for x in "qkv"])
            out[f"{d}txt_attn.qkv.{p}"] = torch.cat([sd.pop(f"{s}attn.add_{x}_proj.{p}") for x in "qkv"])
            for a, b in (
                ("norm1.linear", "img_mod.lin"),
                ("norm1_context.linear", "txt_mod.lin"),
                ("attn.to_out.0", "img_attn.proj"),
                ("attn.to_add_out", "txt_attn.proj"),
                ("ff.net.0.proj", "img_mlp.0"),
                ("ff.net.2", "img_mlp.2"),
                ("ff_context.net.0.proj", "txt_mlp.0"),
                ("ff_context.net.2", "txt_mlp.2"),
            ):
                out[f"{d}{b}.{p}"] = sd.pop(f"{s}{a}.{p}")
        for a, b in (
            ("norm_q", "img_attn.norm.query_norm"),
            ("norm_k", "img_attn.norm.key_norm"),
            ("norm_added_q", "txt_attn.norm.query_norm"),
            ("norm_added_k", "txt_attn.norm.key_norm"),
        ):
            out[f"{d}{b}.scale"] = sd.pop(f"{s}attn.{a}.weight")
        i += 1
    i = 0
    while f"single_transformer_blocks.{i}.attn.to_q.weight" in sd:
        s, d = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for p in ("weight", "bias"):
            fused = [sd.pop(f"{s}attn.to_{x}.{p}") for x in "qkv"] + [sd.pop(f"{s}proj_mlp.{p}")]
            out[f"{d}linear1.{p}"] = torch.cat(fused)
            out[f"{d}linear2.{p}"] = sd.pop(f"{s}proj_out.{p}")
            out[f"{d}modulation.lin.{p}"] = sd.pop(f"{s}norm.linear.{p}")
        out[f"{d}norm.query_norm.scale"] = sd.pop(f"{s}attn.norm_q.weight")
        out[f"{d}norm.key_norm.scale"] = sd.pop(f"{s}attn.norm_k.weight")
        i += 1
    if sd:
        raise KeyError(f"no BFL name for Flux parameters {sorted(sd)[:5]}")
    return out


def sd3_to_mmdit(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """``SD3Transformer2DModel`` parameters → the original MMDiT names (``joint_blocks.0.x_block.attn.qkv``…)."""
    sd = dict(state)
    out = {
        "pos_embed": sd.pop("pos_embed.pos_embed"),
        "x_embedder.proj.weight": sd.pop("pos_embed.proj.weight"),
        "x_embedder.proj.bias": sd.pop("pos_embed.proj.bias"),
    }
    top = {
        "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
        "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
        "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
        "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
        "context_embedder": "context_embedder",
        "proj_out": "final_layer.linear",
    }
    for src, dst in top.items():
        for p in ("weight", "bias"):
            out[f"{dst}.{p}"] = sd.pop(f"{src}.{p}")
    for p in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{p}"] = _swap(sd.pop(f"norm_out.linear.{p}"))
    for i in range(num_layers):
        s, x, c = f"transformer_blocks.{i}.", f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block."
        last = i == num_layers - 1
        for p in ("weight", "bias"):
            out[f"{x}attn.qkv.{p}"] = torch.cat([sd.pop(f"{s}attn.to_{q}.{p}") for q in "qkv"])
            out[f"{c}attn.qkv.{p}"] = torch.cat([sd.pop(f"{s}attn.add_{q}_proj.{p}") for q in "qkv"])
            out[f"{x}attn.proj.{p}"] = sd.pop(f"{s}attn.to_out.0.{p}")
            out[f"{x}adaLN_modulation.1.{p}"] = sd.pop(f"{s}norm1.linear.{p}")
            context_mod = sd.pop(f"{s}norm1_context.linear.{p}")
            out[f"{c}adaLN_modulation.1.{p}"] = _swap(context_mod) if last else context_mod
            out[f"{x}mlp.fc1.{p}"] = sd.pop(f"{s}ff.net.0.proj.{p}")
            out[f"{x}mlp.fc2.{p}"] = sd.pop(f"{s}ff.net.2.{p}")
            if not last:
                out[f"{c}attn.proj.{p}"] = sd.pop(f"{s}attn.to_add_out.{p}")
                out[f"{c}mlp.fc1.{p}"] = sd.pop(f"{s}ff_context.net.0.proj.{p}")
                out[f"{c}mlp.fc2.{p}"] = sd.pop(f"{s}ff_context.net.2.{p}")
            if f"{s}attn2.to_q.{p}" in sd:
                out[f"{x}attn2.qkv.{p}"] = torch.cat([sd.pop(f"{s}attn2.to_{q}.{p}") for q in "qkv"])
                out[f"{x}attn2.proj.{p}"] = sd.pop(f"{s}attn2.to_out.0.{p}")
        for a, b in (("norm_q", f"{x}attn.ln_q"), ("norm_k", f"{x}attn.ln_k")):
            if f"{s}attn.{a}.weight" in sd:
                out[f"{b}.weight"] = sd.pop(f"{s}attn.{a}.weight")
        for a, b in (("norm_added_q", f"{c}attn.ln_q"), ("norm_added_k", f"{c}attn.ln_k")):
            if f"{s}attn.{a}.weight" in sd:
                out[f"{b}.weight"] = sd.pop(f"{s}attn.{a}.weight")
        for a, b in (("norm_q", f"{x}attn2.ln_q"), ("norm_k", f"{x}attn2.ln_k")):
            if f"{s}attn2.{a}.weight" in sd:
                out[f"{b}.weight"] = sd.pop(f"{s}attn2.{a}.weight")
    if sd:
        raise KeyError(f"no MMDiT name for SD3 parameters {sorted(sd)[:5]}")
    return out


def transformer_state(transformer) -> dict[str, torch.Tensor]:
    """A Flux or SD3 transformer's weights under their original names (no ``model.diffusion_model.``)."""
    state = {k: v.detach() for k, v in transformer.state_dict().items()}
    if type(transformer).__name__.startswith("Flux"):
        return flux_to_bfl(state)
    return sd3_to_mmdit(state, transformer.config.num_layers)


def component_state(pipe, slot: str) -> dict[str, torch.Tensor]:
    """A text encoder in the layout its file has (CLIP with ``text_model.``, T5 with ``shared`` only) or the VAE
    in the original layout (``encoder.down.0.block.0…``)."""
    model = getattr(pipe, slot)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if slot == "vae":
        return vae_to_ldm(state, model.config)
    if "shared.weight" in state:  # T5: the tied copy is not stored
        state.pop("encoder.embed_tokens.weight", None)
        return state
    return {
        (k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}"): v for k, v in state.items()
    }


def _family(pipe) -> str:
    return "flux" if type(pipe).__name__.startswith("Flux") else "sd3"


def _stored(state: dict[str, torch.Tensor], fp8: bool) -> dict[str, torch.Tensor]:
    if fp8:
        state = {k: v.to(FP8) if v.is_floating_point() else v for k, v in state.items()}
    return {k: v.contiguous() for k, v in state.items()}


def _parts(fp8: bool | Iterable[str]) -> set[str]:
    if fp8 is True:
        return {"transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae"}
    return set(fp8 or ())


def save_transformer_files(
    pipe, folder: str | Path, *, fp8: bool | Iterable[str] = False, prefixed: bool = False
) -> dict[str, Path]:
    """Write the transformer (``transformer.safetensors``; ``prefixed``: under ``model.diffusion_model.``) and
    each part (``clip_l``, ``clip_g``, ``t5xxl``, ``ae``/``vae``) as its own file. ``fp8``: every part, or the
    named ones (``{"transformer"}``), stored as ``float8_e4m3fn``. Returns slot → path (``transformer`` too)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    family, stored = _family(pipe), _parts(fp8)
    state = transformer_state(pipe.transformer)
    if prefixed:
        state = {TRANSFORMER_PREFIX + k: v for k, v in state.items()}
    paths = {"transformer": folder / "transformer.safetensors"}
    save_file(_stored(state, "transformer" in stored), str(paths["transformer"]))
    for slot, name in FILE_NAMES[family].items():
        paths[slot] = folder / f"{name}.safetensors"
        save_file(_stored(component_state(pipe, slot), slot in stored), str(paths[slot]))
    return paths


def save_bundled_checkpoint(
    pipe, path: str | Path, *, fp8: bool | Iterable[str] = False, parts: Iterable[str] | None = None
) -> Path:
    """Write one ComfyUI-style checkpoint: the transformer under ``model.diffusion_model.`` and ``parts`` (default:
    every text encoder and the VAE) under their bundle prefixes."""
    from safetensors.torch import save_file

    family, stored = _family(pipe), _parts(fp8)
    prefixes = BUNDLE_PREFIXES[family]
    sd = {
        TRANSFORMER_PREFIX + k: v
        for k, v in _stored(transformer_state(pipe.transformer), "transformer" in stored).items()
    }
    for slot in prefixes if parts is None else parts:
        part = _stored(component_state(pipe, slot), slot in stored)
        sd.update({prefixes[slot] + k: v for k, v in part.items()})
    path = Path(path)
    save_file(sd, str(path))
    return path


def round_through_fp8(pipe, parts: bool | Iterable[str] = True) -> None:
    """Round ``pipe``'s weights of ``parts`` through ``float8_e4m3fn`` in place: what loading an fp8 file gives."""
    for slot in _parts(parts):
        model = getattr(pipe, slot, None)
        if model is None:
            continue
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                if tensor.is_floating_point():
                    tensor.copy_(tensor.to(FP8).to(tensor.dtype))
