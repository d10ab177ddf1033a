"""Flux.1 and SD3.x module names: the original layout, kohya's flattening of it, and diffusers' paths.

Black Forest Labs' FLUX.1 code and Stability's MMDiT name modules differently from diffusers, and fuse some
projections diffusers keeps apart: one ``qkv`` Linear where diffusers has ``to_q``/``to_k``/``to_v``, and in Flux's
single blocks one ``linear1`` producing q, k, v and the MLP input (``proj_mlp``) at once. Every Flux/SD3 adapter
format in the wild names modules one of three ways:

* the original ("BFL") dotted paths, ``double_blocks.0.img_attn.qkv`` (ComfyUI's native keys, under
  ``diffusion_model.``; XLabs under ``double_blocks.N.processor``);
* kohya's flattening of those, ``lora_unet_double_blocks_0_img_attn_qkv`` (sd-scripts' lora_flux.py / lora_sd3.py);
* diffusers paths, ``transformer_blocks.0.attn.to_q`` (peft, ai-toolkit; OneTrainer flattens them,
  ``lora_transformer_transformer_blocks_0_attn_to_q``).

The tables here are the whole grammar: a name that is not in them is not a module of these models. The tables were
checked against the full-size models (tests/test_transformer_adapters_fullsize.py builds them on the meta device
and derives the names the way lora_flux.py and lora_sd3.py enumerate modules). Nothing here imports torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# --- the original layout, block by block ----------------------------------------------------------------------
# original path inside a block → the diffusers paths it covers, in row order
FLUX_DOUBLE = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn.proj": ("attn.to_out.0",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "img_mod.lin": ("norm1.linear",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn.proj": ("attn.to_add_out",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
    "txt_mod.lin": ("norm1_context.linear",),
}
FLUX_SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
}
FLUX_TOP = {
    "img_in": ("x_embedder",),
    "txt_in": ("context_embedder",),
    "time_in.in_layer": ("time_text_embed.timestep_embedder.linear_1",),
    "time_in.out_layer": ("time_text_embed.timestep_embedder.linear_2",),
    "vector_in.in_layer": ("time_text_embed.text_embedder.linear_1",),
    "vector_in.out_layer": ("time_text_embed.text_embedder.linear_2",),
    "guidance_in.in_layer": ("time_text_embed.guidance_embedder.linear_1",),
    "guidance_in.out_layer": ("time_text_embed.guidance_embedder.linear_2",),
    "final_layer.linear": ("proj_out",),
    "final_layer.adaLN_modulation.1": ("norm_out.linear",),
}
SD3_JOINT = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "x_block.attn.proj": ("attn.to_out.0",),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),  # SD3.5 Medium's dual attention
    "x_block.attn2.proj": ("attn2.to_out.0",),
    "x_block.mlp.fc1": ("ff.net.0.proj",),
    "x_block.mlp.fc2": ("ff.net.2",),
    "x_block.adaLN_modulation.1": ("norm1.linear",),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "context_block.attn.proj": ("attn.to_add_out",),
    "context_block.mlp.fc1": ("ff_context.net.0.proj",),
    "context_block.mlp.fc2": ("ff_context.net.2",),
    "context_block.adaLN_modulation.1": ("norm1_context.linear",),
}
SD3_TOP = {
    "x_embedder.proj": ("pos_embed.proj",),
    "context_embedder": ("context_embedder",),
    "t_embedder.mlp.0": ("time_text_embed.timestep_embedder.linear_1",),
    "t_embedder.mlp.2": ("time_text_embed.timestep_embedder.linear_2",),
    "y_embedder.mlp.0": ("time_text_embed.text_embedder.linear_1",),
    "y_embedder.mlp.2": ("time_text_embed.text_embedder.linear_2",),
    "final_layer.linear": ("proj_out",),
    "final_layer.adaLN_modulation.1": ("norm_out.linear",),
}
#: family → ((original block list, diffusers block list, table), …)
BLOCKS = {
    "flux": (
        ("double_blocks", "transformer_blocks", FLUX_DOUBLE),
        ("single_blocks", "single_transformer_blocks", FLUX_SINGLE),
    ),
    "sd3": (("joint_blocks", "transformer_blocks", SD3_JOINT),),
}
TOPS = {"flux": FLUX_TOP, "sd3": SD3_TOP}
#: Modulations whose two halves (shift, scale) diffusers stores the other way round (scale, shift): the final
#: layer's, and SD3's last, context-pre-only, block's context modulation. They are the ones with 2 × width outputs.
SWAPPED = frozenset({"final_layer.adaLN_modulation.1", "context_block.adaLN_modulation.1"})
#: FLUX.1's MLP is 4 × the width; a single block's linear1 is q, k, v (width each) and the MLP input.
FLUX_MLP_RATIO = 4

# --- text encoders --------------------------------------------------------------------------------------------
#: T5 encoder modules kohya trains (T5Attention q/k/v/o, T5DenseGatedActDense wi_0/wi_1/wo), flattened.
_T5_FLAT = re.compile(
    r"^encoder_block_(?P<b>[0-9]{1,4})_layer_(?P<l>[01])_(?P<m>SelfAttention_(?:q|k|v|o)|DenseReluDense_(?:wi_0|wi_1|wo|wi))$"
)
_T5_PATH = re.compile(
    r"^encoder\.block\.(?P<b>[0-9]{1,4})\.layer\.(?P<l>[01])\.(?P<m>SelfAttention\.(?:q|k|v|o)|DenseReluDense\.(?:wi_0|wi_1|wo|wi))$"
)


@dataclass(frozen=True)
class Source:
    """One module as an original-layout file names it, and the canonical transformer paths it covers."""

    family: str  # "flux" or "sd3"
    original: str  # "double_blocks.3.img_attn.qkv"
    modules: tuple[str, ...]  # ("transformer_blocks.3.attn.to_q", …), in row order
    swap_candidate: bool = False  # shift/scale halves are exchanged when the module has 2 × width outputs

    @property
    def fused(self) -> bool:
        return len(self.modules) > 1

    @property
    def kohya(self) -> str:
        """sd-scripts' name (without ``.lora_down.weight``)."""
        return "lora_unet_" + self.original.replace(".", "_")


def _local(table_key: str) -> str:
    return table_key.replace(".", "_")


_FLAT_BLOCK = re.compile(r"^(?P<group>double_blocks|single_blocks|joint_blocks)_(?P<i>[0-9]{1,4})_(?P<rest>.+)$")
_DOT_BLOCK = re.compile(r"^(?P<group>double_blocks|single_blocks|joint_blocks)\.(?P<i>[0-9]{1,4})\.(?P<rest>.+)$")
_GROUP_FAMILY = {"double_blocks": "flux", "single_blocks": "flux", "joint_blocks": "sd3"}


def _block_source(family: str, group: str, index: str, local: str) -> Source | None:
    for original_group, diffusers_group, table in BLOCKS[family]:
        if original_group == group and local in table:
            i = int(index)
            modules = tuple(f"{diffusers_group}.{i}.{m}" for m in table[local])
            return Source(family, f"{group}.{i}.{local}", modules, local in SWAPPED)
    return None


def _top_source(path: str, family: str | None) -> Source | None:
    for fam in (family,) if family in TOPS else ("flux", "sd3"):
        if path in TOPS[fam]:
            return Source(fam, path, TOPS[fam][path], path in SWAPPED)
    return None


def parse_original(path: str, family: str | None = None) -> Source | None:
    """``double_blocks.0.img_attn.qkv`` → its :class:`Source`; ``None`` when not a module of Flux or SD3."""
    m = _DOT_BLOCK.match(path)
    if m:
        return _block_source(_GROUP_FAMILY[m["group"]], m["group"], m["i"], m["rest"])
    return _top_source(path, family)


_FLAT_LOCALS = {
    fam: {group: {_local(k): k for k in table} for group, _, table in groups} for fam, groups in BLOCKS.items()
}
_FLAT_TOPS = {fam: {_local(k): k for k in table} for fam, table in TOPS.items()}


def parse_kohya(flat: str, family: str | None = None) -> Source | None:
    """kohya's flattened name without ``lora_unet_`` (``double_blocks_0_img_attn_qkv``) → its :class:`Source`."""
    m = _FLAT_BLOCK.match(flat)
    if m:
        fam = _GROUP_FAMILY[m["group"]]
        local = _FLAT_LOCALS[fam][m["group"]].get(m["rest"])
        return None if local is None else _block_source(fam, m["group"], m["i"], local)
    for fam in (family,) if family in TOPS else ("flux", "sd3"):
        if flat in _FLAT_TOPS[fam]:
            return _top_source(_FLAT_TOPS[fam][flat], fam)
    return None


# --- diffusers paths -------------------------------------------------------------------------------------------
_DIFFUSERS_BLOCK = re.compile(
    r"^(?P<group>single_transformer_blocks|transformer_blocks)\.(?P<i>[0-9]{1,4})\.(?P<rest>.+)$"
)
_DIFFUSERS_FLAT_BLOCK = re.compile(
    r"^(?P<group>single_transformer_blocks|transformer_blocks)_(?P<i>[0-9]{1,4})_(?P<rest>.+)$"
)


def _inverse() -> dict[str, dict[str, tuple[str, int]]]:
    """family → {diffusers path pattern ("transformer_blocks.{}.attn.to_q" or a top path): (original, index)}."""
    out: dict[str, dict[str, tuple[str, int]]] = {}
    for fam, groups in BLOCKS.items():
        table: dict[str, tuple[str, int]] = {}
        for original_group, diffusers_group, locals_ in groups:
            for local, modules in locals_.items():
                for j, m in enumerate(modules):
                    table[f"{diffusers_group}.{{}}.{m}"] = (f"{original_group}.{{}}.{local}", j)
        for original, modules in TOPS[fam].items():
            table[modules[0]] = (original, 0)
        out[fam] = table
    return out


_INVERSE = _inverse()
#: diffusers block-local paths of both families (a module path inside transformer_blocks.N / single_…N).
DIFFUSERS_LOCALS = {
    "transformer_blocks": frozenset(m for t in (FLUX_DOUBLE, SD3_JOINT) for ms in t.values() for m in ms),
    "single_transformer_blocks": frozenset(m for ms in FLUX_SINGLE.values() for m in ms),
}
DIFFUSERS_TOPS = frozenset(ms[0] for t in TOPS.values() for ms in t.values())
_FLAT_DIFFUSERS_LOCALS = {g: {_local(m): m for m in ms} for g, ms in DIFFUSERS_LOCALS.items()}
_FLAT_DIFFUSERS_TOPS = {_local(m): m for m in DIFFUSERS_TOPS}


def is_transformer_path(path: str) -> bool:
    """``path`` is a module of the Flux or SD3 diffusers transformer (a linear/conv that adapters target)."""
    m = _DIFFUSERS_BLOCK.match(path)
    if m:
        return m["rest"] in DIFFUSERS_LOCALS[m["group"]]
    return path in DIFFUSERS_TOPS


def parse_diffusers_flat(flat: str) -> str | None:
    """OneTrainer's flattened diffusers name without ``lora_transformer_`` → the diffusers path, or ``None``."""
    m = _DIFFUSERS_FLAT_BLOCK.match(flat)
    if m:
        local = _FLAT_DIFFUSERS_LOCALS[m["group"]].get(m["rest"])
        return None if local is None else f"{m['group']}.{int(m['i'])}.{local}"
    return _FLAT_DIFFUSERS_TOPS.get(flat)


def to_original(family: str, path: str) -> tuple[Source, int] | None:
    """A canonical transformer path (``transformer_blocks.3.attn.to_k``) → (its original :class:`Source`, the
    position of the path among the source's modules); ``None`` for a path the family does not have."""
    table = _INVERSE.get(family)
    if table is None:
        return None
    m = _DIFFUSERS_BLOCK.match(path)
    if m:
        found = table.get(f"{m['group']}.{{}}.{m['rest']}")
        if found is None:
            return None
        original, j = found
        source = parse_original(original.format(int(m["i"])), family)
    else:
        found = table.get(path)
        if found is None:
            return None
        original, j = found
        source = parse_original(original, family)
    return (source, j) if source is not None and source.family == family else None


# --- T5 ----------------------------------------------------------------------------------------------------------
def t5_from_flat(flat: str) -> str | None:
    """``encoder_block_0_layer_1_DenseReluDense_wi_0`` → ``encoder.block.0.layer.1.DenseReluDense.wi_0``."""
    m = _T5_FLAT.match(flat)
    if not m:
        return None
    module = m["m"].replace("SelfAttention_", "SelfAttention.").replace("DenseReluDense_", "DenseReluDense.")
    return f"encoder.block.{int(m['b'])}.layer.{m['l']}.{module}"


def is_t5_path(path: str) -> bool:
    return _T5_PATH.match(path) is not None


def t5_to_flat(path: str) -> str:
    return path.replace(".", "_")
