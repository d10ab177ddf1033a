"""Which base-model family an adapter was made for, from its module names and tensor shapes.

Each piece of evidence narrows the set of candidate families; the answer is a family only when exactly one is
left. Full-size models are told apart by widths (cross-attention 768 / 1024 / 2048, text encoder 768 / 1024 /
1280); models of the same topology but other widths (the tiny test models, research variants) by topology: SDXL
has no attention in its first level, attention in its first up block, several transformer layers per block and a
second text encoder; SD1.x projects into attention with 1×1 convolutions where SD2.x and SDXL use linear layers.
The transformer families (FLUX.1, SD3.x) are told from the UNet ones by their
components (``transformer``, a T5 ``text_encoder_2`` in Flux, ``text_encoder_3`` in SD3) and from each other by
their widths (Flux 3072; SD3 Medium / 3.5 Medium 1536, SD3.5 Large 2432) or, at other widths, by structure only one
has: Flux's single blocks and guidance embedder, SD3's patch embedding, SD3.5's second attention, SD3's
context-pre-only last block, and the original-layout names the file used (``double_blocks`` / ``joint_blocks``).
A header's declared family (ModelSpec, kohya's ss_base_model_version) overrules topology; against the widths of a
full-size model the widths win and the declaration is ignored; against other structure (1×1-conv projections, a
second text encoder) the evidence contradicts itself and the answer is ``unknown``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .constants import FAMILIES, UNKNOWN
from .errors import shown
from .layers import Layer
from .naming import split_component

CROSS_ATTENTION_DIMS = {768: {"sd1"}, 1024: {"sd2"}, 2048: {"sdxl"}}
TEXT_ENCODER_DIMS = {768: {"sd1", "sdxl", "flux", "sd3"}, 1024: {"sd2"}}
TEXT_ENCODER_2_DIMS = {1280: {"sdxl", "sd3"}}
#: Inner width of the MMDiT blocks (the input width of every attention projection).
TRANSFORMER_DIMS = {3072: {"flux"}, 1536: {"sd3"}, 2432: {"sd3"}}
UNET_FAMILIES = frozenset({"sd1", "sd2", "sdxl"})
TRANSFORMER_FAMILIES = frozenset({"flux", "sd3"})
_ATTENTION_PROJECTION = re.compile(r"\.attn2?\.(?:to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj)$")

_TRANSFORMER_INDEX = re.compile(r"\.transformer_blocks\.([0-9]+)\.")
_TE_LAYER_INDEX = re.compile(r"\.layers\.([0-9]+)\.")


@dataclass(frozen=True)
class Probe:
    """The probed family (or ``"unknown"``), the families still possible, and why.

    ``declared`` is the header key whose declaration counted (``"modelspec.architecture"`` or
    ``"ss_base_model_version"``), and ``declared_family`` what it declared; both are ``None`` when the header
    declares nothing, or when the widths overruled it. ``guessed``: the family rests on topology alone.
    """

    family: str
    candidates: tuple[str, ...]
    evidence: tuple[str, ...] = field(default_factory=tuple)
    declared: str | None = None
    declared_family: str | None = None
    guessed: bool = False

    @property
    def known(self) -> bool:
        return self.family != UNKNOWN


_DECLARATIONS = (
    (
        "modelspec.architecture",
        (
            ("stable-diffusion-xl", "sdxl"),
            ("stable-diffusion-v2", "sd2"),
            ("stable-diffusion-v1", "sd1"),
            ("stable-diffusion-v3", "sd3"),
            ("stable-diffusion-3", "sd3"),  # sd-scripts' spelling ("stable-diffusion-3-m", "-3-5-large")
            ("flux-1", "flux"),
        ),
    ),
    (
        "ss_base_model_version",
        (
            ("sdxl", "sdxl"),
            ("sd_v2", "sd2"),
            ("sd_2", "sd2"),
            ("sd_v1", "sd1"),
            ("sd_1", "sd1"),
            ("sd3", "sd3"),
            ("flux", "flux"),
        ),
    ),
)


def declaration(header: Mapping[str, str]) -> tuple[str, str, str] | None:
    """``(family, header key, "key is value")`` for the family a header declares (ModelSpec architecture first,
    then kohya's base version), or ``None``."""
    for key, prefixes in _DECLARATIONS:
        value = header.get(key)
        if not isinstance(value, str):
            continue
        for prefix, family in prefixes:
            if value.startswith(prefix):
                return family, key, f"{key} is {shown(value)}"
    return None


def family_from_header(header: Mapping[str, str]) -> tuple[str, str] | None:
    """The family a header declares (ModelSpec architecture or kohya base version), with the key that said so."""
    found = declaration(header)
    return None if found is None else (found[0], found[2])


def probe_family(
    layers: Mapping[str, Layer], header: Mapping[str, str] | None = None, layout: str | None = None
) -> Probe:
    """Probe the family from the layers, and from what the header declares.

    Widths are firm evidence, and so is structure only one family has (1×1-conv attention projections, a second
    text encoder); topology (which levels have attention, how many) is a guess that holds for the full-size models
    only, so a header's declaration overrules it (a small model trained here can have SDXL's topology and be an
    SD 1.x model). A declaration the widths contradict is ignored (the widths decide); one that other firm
    evidence contradicts leaves the family unknown. ``layout``: the family whose original module names the file
    used (``"flux"`` for ``double_blocks``, ``"sd3"`` for ``joint_blocks``), firm evidence.
    """
    widths, firm, shaped = set(FAMILIES), set(FAMILIES), set(FAMILIES)
    evidence: list[str] = []

    def narrow(allowed: set[str], why: str, kind: str = "structure") -> None:
        nonlocal widths, firm, shaped
        if why not in evidence:
            evidence.append(why)
            if kind == "topology":
                shaped &= allowed
            elif kind == "width":
                widths &= allowed
            else:
                firm &= allowed

    if layout in TRANSFORMER_FAMILIES:
        narrow({layout}, f"{'FLUX.1' if layout == 'flux' else 'SD3'} module names in the original layout")
    for name, layer in layers.items():
        component, path = split_component(name)
        if component == "text_encoder_2":
            if path.startswith("encoder.block."):
                narrow({"flux"}, "text_encoder_2 is a T5 encoder")
                continue
            narrow({"sdxl", "sd3"}, "has CLIP text_encoder_2 layers")
            if path.endswith(".q_proj") and layer.in_features in TEXT_ENCODER_2_DIMS:
                narrow(TEXT_ENCODER_2_DIMS[layer.in_features], f"text_encoder_2 width {layer.in_features}", "width")
        elif component == "text_encoder":
            if path.endswith(".q_proj") and layer.in_features in TEXT_ENCODER_DIMS:
                narrow(TEXT_ENCODER_DIMS[layer.in_features], f"text_encoder width {layer.in_features}", "width")
            m = _TE_LAYER_INDEX.search(path)
            if m and _index(m) >= 12:
                narrow({"sd2"}, "text_encoder has more than 12 layers")
        elif component == "text_encoder_3":
            narrow({"sd3"}, "has text_encoder_3 layers")
        elif component == "unet":
            narrow(set(UNET_FAMILIES), "has UNet layers")
            _unet_evidence(path, layer, narrow)
        elif component == "transformer":
            narrow(set(TRANSFORMER_FAMILIES), "has transformer layers")
            _transformer_evidence(path, layer, narrow)
    components = {split_component(name)[0] for name in layers}
    t5 = any(n.startswith("text_encoder_2.encoder.block.") for n in layers)
    if components and components <= {"text_encoder", "text_encoder_2"} and not t5:
        # CLIP encoders alone: the UNet families' and the transformers' are the same models; most such files are
        # for the UNet families, a guess a header's declaration overrules
        narrow(set(UNET_FAMILIES), "CLIP text-encoder layers only", "topology")
    candidates = widths & firm & shaped
    declared = declared_family = None
    found = declaration(header or {})
    if found is not None:
        family, key, why = found
        if family not in widths:
            evidence.append(f"{why}, ignored: the widths say otherwise")
        else:
            evidence.append(why)
            declared, declared_family = key, family
            if family in firm and family not in shaped:
                evidence.append("the declaration overrules the topology")
            candidates = widths & firm & {family}
    if not layers:
        evidence.append("no layers")
        candidates = set()
    family = next(iter(candidates)) if len(candidates) == 1 else UNKNOWN
    if not candidates:
        evidence.append("the evidence contradicts itself")
    guessed = family != UNKNOWN and declared is None and len(widths & firm) > 1
    return Probe(family, tuple(sorted(candidates)), tuple(evidence), declared, declared_family, guessed)


def _unet_evidence(path: str, layer: Layer, narrow) -> None:
    if ".attn2.to_k" in path or ".attn2.to_v" in path:
        dim = layer.in_features if layer.natural_shape is not None else layer.in_numel
        if dim in CROSS_ATTENTION_DIMS:
            narrow(CROSS_ATTENTION_DIMS[dim], f"cross-attention width {dim}", "width")
    if path.endswith((".proj_in", ".proj_out")) and layer.natural_shape is not None:
        if len(layer.natural_shape) == 4:
            narrow({"sd1"}, "attention projections are 1x1 convolutions")
        else:
            narrow({"sd2", "sdxl"}, "attention projections are linear")
    if path.startswith("down_blocks.0.attentions."):
        narrow({"sd1", "sd2"}, "attention in the first down block", "topology")
    if path.startswith("up_blocks.0.attentions."):
        narrow({"sdxl"}, "attention in the first up block", "topology")
    if path.startswith(("down_blocks.3.", "up_blocks.3.")):
        narrow({"sd1", "sd2"}, "four UNet levels", "topology")
    if path.startswith("add_embedding."):
        narrow({"sdxl"}, "text_time added conditioning")
    m = _TRANSFORMER_INDEX.search("." + path)
    if m and _index(m) >= 1:
        narrow({"sdxl"}, "several transformer layers per attention block", "topology")


def _transformer_evidence(path: str, layer: Layer, narrow) -> None:
    width = layer.in_features if layer.natural_shape is not None else layer.in_numel
    if _ATTENTION_PROJECTION.search(path) and width in TRANSFORMER_DIMS:
        narrow(TRANSFORMER_DIMS[width], f"transformer width {width}", "width")
    if path.startswith("single_transformer_blocks."):
        narrow({"flux"}, "single-stream blocks")
    elif path.startswith(("x_embedder", "time_text_embed.guidance_embedder.")):
        narrow({"flux"}, "FLUX.1 embedders")
    elif path.startswith("pos_embed."):
        narrow({"sd3"}, "patch embedding")
    elif ".attn2." in path:
        narrow({"sd3"}, "second attention in the joint blocks (SD3.5)")
    elif path.endswith(".norm1_context.linear") and layer.out_features == 2 * width:
        narrow({"sd3"}, "a context-pre-only last joint block")


def _index(m: re.Match) -> int:
    digits = m.group(1)
    return int(digits) if len(digits) < 10 else 1 << 40  # a name from a file may hold any number of digits
