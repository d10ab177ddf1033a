"""Where a canonical module's weight sits in an original-layout single file, for ``lorastack bake``.

A baked single file is the base file itself with the touched weights replaced, so every other tensor (the VAE, EMA
copies, keys lorastack does not know) stays bit for bit. diffusers reads these files but ships no writer, so the
map from diffusers module names back to original keys is kept here:

* the UNet: ``model.diffusion_model.`` + the SGM path (:func:`lorastack.adapters.naming.diffusers_to_sgm`);
* CLIP-L text encoders: ``cond_stage_model.transformer.`` (SD1), ``conditioner.embedders.0.transformer.`` (SDXL),
  ``text_encoders.clip_l.transformer.`` (a ComfyUI bundle), with or without the ``text_model.`` level;
* OpenCLIP text encoders (SD2's, SDXL's second): q/k/v are row thirds of ``attn.in_proj_weight``, the MLP is
  ``mlp.c_fc``/``mlp.c_proj``, layers are ``transformer.resblocks.N``; the projection is ``text_projection``, stored
  transposed (``in × out``, as diffusers' converter reads it);
* FLUX.1 / SD3 transformers: the original (BFL/MMDiT) module and the rows of it that are the diffusers projection
  (:func:`lorastack.adapters.fused.source_rows`), bare or under ``model.diffusion_model.``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import torch

from .arith import ArithmeticInputError

_CLIP_PREFIXES = (
    "cond_stage_model.transformer.",
    "conditioner.embedders.0.transformer.",
    "text_encoders.clip_l.transformer.",
)
_OPEN_CLIP_PREFIXES = {
    "sd2": {"text_encoder": "cond_stage_model.model."},
    "sdxl": {"text_encoder_2": "conditioner.embedders.1.model."},
}
_BUNDLE_PREFIXES = {
    ("flux", "text_encoder_2"): "text_encoders.t5xxl.transformer.",
    ("sd3", "text_encoder_2"): "text_encoders.clip_g.transformer.",
    ("sd3", "text_encoder_3"): "text_encoders.t5xxl.transformer.",
}
_OPEN_CLIP_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(self_attn\.(q|k|v|out)_proj|mlp\.fc1|mlp\.fc2)$")
_OPEN_CLIP_NAMES = {"self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}

Rows = tuple[tuple[int, int], ...]


class Place(NamedTuple):
    """Where a module's weight sits in the file: the tensor, the rows of it that are the module's (``None``: all
    of it), and whether the file stores it transposed."""

    key: str
    rows: Rows | None = None
    transposed: bool = False


def _refuse(name: str) -> ArithmeticInputError:
    return ArithmeticInputError(
        f"{name} has no place lorastack knows in this single file's original layout; give -o a folder to write a "
        "diffusers folder instead"
    )


def original_key(name: str, family: str, keys: dict[str, torch.Size], unet_config=None) -> Place:
    """The :class:`Place` in the file that holds ``name``'s weight."""
    component, _, path = name.partition(".")
    if component == "unet":
        from lorastack.adapters.naming import diffusers_to_sgm

        lpb = unet_config["layers_per_block"] if unet_config else 2
        lpb = lpb if isinstance(lpb, int) else lpb[0]
        attention = (
            {i for i, t in enumerate(unet_config["up_block_types"]) if "CrossAttn" in t} if unet_config else None
        )
        mapped = diffusers_to_sgm(path, lpb, attention)
        key = f"model.diffusion_model.{mapped}.weight"
        if mapped is None or key not in keys:
            raise _refuse(name)
        return Place(key)
    if component == "transformer":
        return _transformer_key(name, family, path, keys)
    open_clip = _OPEN_CLIP_PREFIXES.get(family, {}).get(component)
    if open_clip is not None and any(k.startswith(open_clip) for k in keys):
        return _open_clip_key(name, open_clip, path, keys)
    prefixes = _CLIP_PREFIXES if component == "text_encoder" else (_BUNDLE_PREFIXES.get((family, component)),)
    bare = path[len("text_model.") :] if path.startswith("text_model.") else path
    for prefix in prefixes:
        for candidate in (path, bare, "text_model." + bare):
            key = f"{prefix}{candidate}.weight"
            if prefix and key in keys:
                return Place(key)
    raise _refuse(name)


def _open_clip_key(name: str, prefix: str, path: str, keys) -> Place:
    if path == "text_projection" and prefix + "text_projection" in keys:
        return Place(prefix + "text_projection", None, True)
    m = _OPEN_CLIP_LAYER.match(path)
    if m is None:
        raise _refuse(name)
    layer, module, qkv = m.group(1), m.group(2), m.group(3)
    base = f"{prefix}transformer.resblocks.{layer}."
    if qkv in ("q", "k", "v"):
        key = base + "attn.in_proj_weight"
        if key not in keys:
            raise _refuse(name)
        d = keys[key][0] // 3
        j = "qkv".index(qkv)
        return Place(key, ((j * d, (j + 1) * d),))
    key = base + _OPEN_CLIP_NAMES[module] + ".weight"
    if key not in keys:
        raise _refuse(name)
    return Place(key)


def _transformer_key(name: str, family: str, path: str, keys) -> Place:
    from lorastack.adapters import FullLayer
    from lorastack.adapters.fused import source_rows
    from lorastack.adapters.mmdit import to_original

    found = to_original(family, path)
    if found is None:
        raise _refuse(name)
    source, j = found
    for prefix in ("model.diffusion_model.", "", "diffusion_model."):
        key = f"{prefix}{source.original}.weight"
        if key in keys:
            shape = tuple(keys[key])
            # the rows only depend on the fused weight's shape: a shape-only stand-in layer asks for them
            rows = source_rows(source, FullLayer(torch.empty(shape, device="meta")))[j]
            whole = rows == ((0, shape[0]),)
            return Place(key, None if whole else rows)
    raise _refuse(name)


def put_rows(original: torch.Tensor, rows: Rows | None, new: torch.Tensor, transposed: bool = False) -> torch.Tensor:
    """``original`` with ``rows`` (all of it for ``None``) replaced by ``new`` (``transposed``: stored as its
    transpose), in ``original``'s dtype and shape."""
    if transposed:
        new = new.T
    if rows is None:
        return new.reshape(original.shape).to(original.dtype).contiguous()
    out = original.clone()
    flat, values = out.reshape(out.shape[0], -1), new.reshape(new.shape[0], -1).to(out.dtype)
    start = 0
    for a, b in rows:
        flat[a:b] = values[start : start + (b - a)]
        start += b - a
    return out
