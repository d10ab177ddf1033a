"""Key grammar of Flux.1 and SD3.x adapter files, in every dialect lorastack reads.

Each key is located to ``(group, field, style)``: ``group`` is either a canonical module name
(``transformer.transformer_blocks.0.attn.to_q``) or, for a module in the original layout, ``transformer@`` and the
original path (``transformer@double_blocks.0.img_attn.qkv``), which :mod:`~lorastack.adapters.fused` splits into
canonical modules once its layer is built. T5 modules read from kohya names are grouped under ``t5@`` until the
family decides their component (``text_encoder_2`` in Flux, ``text_encoder_3`` in SD3).

Dialects (``style``):

* ``kohya``: sd-scripts' ``lora_unet_double_blocks_0_img_attn_qkv``, ``lora_unet_joint_blocks_0_x_block_attn_qkv``,
  text encoders ``lora_te1_`` (CLIP-L), ``lora_te2_`` (SD3's CLIP-G), ``lora_te3_`` (T5); LyCORIS suffixes too.
* ``onetrainer``: ``lora_transformer_`` + flattened diffusers paths (and ``lora_te2_`` T5 for Flux).
* ``bfl``: original dotted paths, bare, under ``diffusion_model.`` (ComfyUI) or ``transformer.``, with peft
  (``lora_A``/``lora_B``), kohya (``lora_down``/``lora_up``, ``.alpha``) or LyCORIS suffixes; ComfyUI's
  ``text_encoders.clip_l.transformer.``/``clip_g``/``t5xxl`` text-encoder prefixes.
* ``xlabs``: ``double_blocks.N.processor.qkv_lora1.down.weight`` (image stream), ``qkv_lora2`` (text stream),
  ``proj_lora1``/``proj_lora2``; single blocks' ``qkv_lora`` (their q, k, v).
* diffusers/peft transformer paths go through the reader's diffusers grammar (``transformer.`` prefix or the
  un-prefixed tops of :data:`UNPREFIXED_TOPS`).
"""

from __future__ import annotations

import re

from .mmdit import Source, parse_diffusers_flat, parse_kohya, parse_original, t5_from_flat

ORIGINAL = "transformer@"
T5 = "t5@"
#: Un-prefixed diffusers paths that belong to a Flux/SD3 transformer (a peft save of the transformer alone).
UNPREFIXED_TOPS = (
    "transformer_blocks.",
    "single_transformer_blocks.",
    "x_embedder.",
    "context_embedder.",
    "time_text_embed.",
    "norm_out.",
    "proj_out.",
    "pos_embed.",
)
# suffix → layer field, for dotted original-layout keys (peft and kohya/LyCORIS spellings)
_DOTTED_SUFFIXES = (
    ("lora_A.weight", "down"),
    ("lora_B.weight", "up"),
    ("lora_down.weight", "down"),
    ("lora_up.weight", "up"),
    ("lora_mid.weight", "mid"),
    ("alpha", "alpha"),
    ("dora_scale", "dora_scale"),
    ("lora_magnitude_vector", "dora_scale"),
    ("diff", "diff"),
    ("diff_b", "diff_b"),
    *((f"hada_{n}", n) for n in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")),
    *((f"lokr_{n}", f"lokr.{n}") for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")),
)
_DOTTED = {s: f for s, f in _DOTTED_SUFFIXES}
_XLABS = re.compile(
    r"^(?:diffusion_model\.)?(?P<group>double_blocks|single_blocks)\.(?P<i>[0-9]{1,4})\.processor\."
    r"(?P<lora>qkv_lora1|qkv_lora2|proj_lora1|proj_lora2|qkv_lora)\.(?P<ud>down|up)\.weight$"
)
_XLABS_DOUBLE = {
    "qkv_lora1": "img_attn.qkv",
    "qkv_lora2": "txt_attn.qkv",
    "proj_lora1": "img_attn.proj",
    "proj_lora2": "txt_attn.proj",
}
_COMFY_TEXT = (
    ("text_encoders.clip_l.transformer.", "text_encoder"),
    ("text_encoders.clip_g.transformer.", "text_encoder_2"),
    ("text_encoders.t5xxl.transformer.", T5),
)


def locate(key: str, kohya_suffixes: dict[str, str], sources: dict[str, Source]) -> tuple[str, str, str] | None:
    """Locate a key of a Flux/SD3 file, or ``None`` when it is not one (the reader's other grammars try next).

    ``sources`` collects the :class:`~lorastack.adapters.mmdit.Source` of every ``transformer@`` group.
    """
    if key.startswith("lora_"):
        return _locate_flat(key, kohya_suffixes, sources)
    m = _XLABS.match(key)
    if m:
        return _locate_xlabs(m, sources)
    return _locate_dotted(key, sources)


def _original(source: Source | None, sources: dict[str, Source]) -> str | None:
    if source is None:
        return None
    group = ORIGINAL + source.original
    sources[group] = source
    return group


def _locate_flat(key: str, kohya_suffixes: dict[str, str], sources: dict[str, Source]):
    lora_name, _, suffix = key.partition(".")
    fld = kohya_suffixes.get(suffix)
    if fld is None:
        return None
    if lora_name.startswith("lora_unet_"):
        group = _original(parse_kohya(lora_name[len("lora_unet_") :]), sources)
        return None if group is None else (group, fld, "kohya")
    if lora_name.startswith("lora_transformer_"):
        path = parse_diffusers_flat(lora_name[len("lora_transformer_") :])
        return None if path is None else (f"transformer.{path}", fld, "onetrainer")
    for prefix in ("lora_te1_", "lora_te2_", "lora_te3_"):
        if lora_name.startswith(prefix):
            path = t5_from_flat(lora_name[len(prefix) :])
            if path is not None:  # CLIP names are left to the kohya grammar
                return f"{T5}{path}", fld, "onetrainer" if prefix == "lora_te2_" else "kohya"
    return None


def _locate_xlabs(m: re.Match, sources: dict[str, Source]):
    i = int(m["i"])
    fld = "down" if m["ud"] == "down" else "up"
    if m["group"] == "double_blocks":
        if m["lora"] not in _XLABS_DOUBLE:
            return None
        source = parse_original(f"double_blocks.{i}.{_XLABS_DOUBLE[m['lora']]}", "flux")
    elif m["lora"] == "qkv_lora":
        # the single block's q, k, v: the first three parts of linear1 (without the MLP input)
        modules = tuple(f"single_transformer_blocks.{i}.attn.{p}" for p in ("to_q", "to_k", "to_v"))
        source = Source("flux", f"single_blocks.{i}.processor.qkv_lora", modules)
    else:
        return None  # a single block's proj_lora acts on the block's output, not on a weight of it
    group = _original(source, sources)
    return None if group is None else (group, fld, "xlabs")


def _locate_dotted(key: str, sources: dict[str, Source]):
    for prefix, component in _COMFY_TEXT:
        if key.startswith(prefix):
            module, fld = _split_suffix(key[len(prefix) :])
            if module is None:
                return None
            if component == T5:
                return f"{T5}{module}", fld, "bfl"
            return f"{component}.{module}", fld, "bfl"
    k = key
    for prefix in ("diffusion_model.", "transformer.", "model.diffusion_model."):
        if k.startswith(prefix):
            k = k[len(prefix) :]
            break
    module, fld = _split_suffix(k)
    if module is None:
        return None
    group = _original(parse_original(module), sources)
    return None if group is None else (group, fld, "bfl")


def _split_suffix(k: str) -> tuple[str | None, str]:
    for suffix, fld in _DOTTED_SUFFIXES:
        if k.endswith("." + suffix):
            return k[: -len(suffix) - 1], fld
    return None, ""
