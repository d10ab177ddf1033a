"""Flux.1 and SD3.x adapters written in the original layout: kohya sd-scripts names, or BFL/ComfyUI keys.

Both layouts name the original modules, so the canonical (diffusers) layers are first joined back into them
(:func:`~lorastack.adapters.fused.join`): a file read in either layout is written back with the tensors it had.

* ``kohya``: ``lora_unet_`` + the flattened original path (``lora_unet_double_blocks_0_img_attn_qkv``), text
  encoders ``lora_te1_`` (CLIP-L), ``lora_te2_`` (SD3's CLIP-G), ``lora_te3_`` (T5), as sd-scripts' lora_flux.py
  and lora_sd3.py name them and ComfyUI maps them (``lora_unet_`` + its diffusion-model key, flattened).
* ``bfl``: ``diffusion_model.`` + the original path, peft suffixes for LoRA (``lora_A``/``lora_B``, ``.alpha``),
  LyCORIS suffixes otherwise; text encoders under ComfyUI's ``text_encoders.clip_l.transformer.`` /
  ``clip_g`` / ``t5xxl`` (ComfyUI's generic key for every weight of a model it loads).
"""

from __future__ import annotations

import torch

from .adapter import Adapter
from .errors import UnsupportedAdapterError, shown
from .families import FAMILY_TABLE
from .fused import join
from .layers import FullLayer, Layer, LoKrLayer, LoRALayer
from .mmdit import Source, to_original
from .naming import normalize_text_encoder_path, split_component
from .slices import RowSliceLayer

KOHYA_TEXT_PREFIXES = {
    "flux": {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te3_"},
    "sd3": {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_", "text_encoder_3": "lora_te3_"},
}
BFL_TEXT_PREFIXES = {
    "flux": {
        "text_encoder": "text_encoders.clip_l.transformer.",
        "text_encoder_2": "text_encoders.t5xxl.transformer.",
    },
    "sd3": {
        "text_encoder": "text_encoders.clip_l.transformer.",
        "text_encoder_2": "text_encoders.clip_g.transformer.",
        "text_encoder_3": "text_encoders.t5xxl.transformer.",
    },
}
_LYCORIS = {
    "down": "lora_down.weight",
    "up": "lora_up.weight",
    "mid": "lora_mid.weight",
    "dora_scale": "dora_scale",
    "diff": "diff",
    "diff_b": "diff_b",
    **{n: f"hada_{n}" for n in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")},
}
_LOKR = {n: f"lokr_{n}" for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")}
_BFL_LORA = {"down": "lora_A.weight", "up": "lora_B.weight", "dora_scale": "dora_scale"}


def original_layers(adapter: Adapter, family: str) -> dict[tuple[str, str], Layer]:
    """``{(component, original path or text-encoder path): layer}``: the transformer layers joined into the
    original modules, the text-encoder layers as they are."""
    label = FAMILY_TABLE[family].label
    allowed = FAMILY_TABLE[family].components
    pieces: dict[str, tuple[Source, dict[int, Layer]]] = {}
    out: dict[tuple[str, str], Layer] = {}
    for name, layer in adapter.layers.items():
        component, path = split_component(name)
        if component not in allowed:
            raise UnsupportedAdapterError(
                f"{shown(name, 120)} is not a module of a {label} base ({', '.join(allowed)})"
            )
        if component != "transformer":
            out[(component, path)] = layer
            continue
        found = to_original(family, path)
        if found is None:
            raise UnsupportedAdapterError(f"{shown(name, 120)} is not a module of the {label} transformer")
        source, j = found
        pieces.setdefault(source.original, (source, {}))[1][j] = layer
    for original, (source, parts) in pieces.items():
        out[("transformer", original)] = join(source, parts)
    return out


def _check_writable(key: str, layer: Layer) -> None:
    if isinstance(layer, RowSliceLayer):  # a slice left over (a text encoder cannot hold one; be explicit)
        raise UnsupportedAdapterError(f"{shown(key, 120)}: a slice of a fused layer cannot be written on its own")


def kohya_tensors(adapter: Adapter, family: str, cast) -> dict[str, torch.Tensor]:
    """The tensors of a kohya sd-scripts file for a Flux or SD3 base."""
    tensors: dict[str, torch.Tensor] = {}
    for (component, path), layer in sorted(original_layers(adapter, family).items()):
        if component == "transformer":
            base = "lora_unet_" + path.replace(".", "_")
        else:
            base = KOHYA_TEXT_PREFIXES[family][component] + normalize_text_encoder_path(path).replace(".", "_")
        _check_writable(base, layer)
        suffixes = _LOKR if isinstance(layer, LoKrLayer) else _LYCORIS
        for fld, t in layer.tensors().items():
            tensors[f"{base}.{suffixes.get(fld, _LYCORIS.get(fld))}"] = cast(t)
        _alpha(tensors, base, layer)
    return tensors


def bfl_tensors(adapter: Adapter, family: str, cast) -> dict[str, torch.Tensor]:
    """The tensors of a BFL/ComfyUI-layout file for a Flux or SD3 base."""
    tensors: dict[str, torch.Tensor] = {}
    for (component, path), layer in sorted(original_layers(adapter, family).items()):
        if component == "transformer":
            base = "diffusion_model." + path
        else:
            base = BFL_TEXT_PREFIXES[family][component] + normalize_text_encoder_path(path)
        _check_writable(base, layer)
        plain = isinstance(layer, LoRALayer) and layer.mid is None
        suffixes = _BFL_LORA if plain else _LOKR if isinstance(layer, LoKrLayer) else _LYCORIS
        for fld, t in layer.tensors().items():
            tensors[f"{base}.{suffixes.get(fld, _LYCORIS.get(fld))}"] = cast(t)
        _alpha(tensors, base, layer)
    return tensors


def _alpha(tensors: dict[str, torch.Tensor], base: str, layer: Layer) -> None:
    if not isinstance(layer, FullLayer):
        # no stored alpha means scale 1, which kohya spells alpha = rank; write it so no reader has to guess
        alpha = layer.alpha if layer.alpha is not None else (layer.rank or 1)
        tensors[f"{base}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
