"""Base-model families as data: what differs between SD1.x, SD2.x, SDXL, Flux.1 and SD3.x.

The reader, the stack, the generator and the training engine are one copy each; a family only says which
components its pipelines have, what its denoiser is called, how its blocks are named for people, how big it draws,
which diffusers pipelines run it and what its training objective is. Nothing here imports torch (the CLI reads it
at start-up).

Block names are the ones users type in scales and ``<lora:…>`` tags. For the transformer families they follow kohya's
Flux naming: ``double.0``…``double.18`` (diffusers ``transformer_blocks``), ``single.0``…``single.37``
(``single_transformer_blocks``) for FLUX.1, ``joint.0``…``joint.23`` for SD3.x (``transformer_blocks``). The counts
come from the loaded model's config, never from this table: a pruned or tiny model has other counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BlockGroup:
    """One family of repeated blocks: the name users type, the module path it covers, the config key with the count."""

    name: str  # "double"
    path: str  # "transformer_blocks"
    count_key: str  # "num_layers"


@dataclass(frozen=True)
class Family:
    """What lorastack needs to know about one base-model family."""

    name: str
    label: str
    denoiser: str  # "unet" or "transformer": the pipeline attribute (and canonical component) of the denoiser
    text_encoders: tuple[str, ...]  # pipeline attributes, in order
    text_encoder_kinds: tuple[str, ...]  # "clip-l", "clip-g", "openclip-h", "t5"
    resolution: int
    guidance: float  # diffusers' default guidance for the family's pipeline
    pipelines: dict[str, str] = field(default_factory=dict)  # "txt2img" / "img2img" / "inpaint" → diffusers class
    objective: str = "epsilon"  # "epsilon" (noise prediction; SD2 768 models v), or "flow" (rectified flow)
    blocks: tuple[BlockGroup, ...] = ()  # transformer block groups; the UNet families use down/mid/up
    guidance_kind: str = "cfg"  # "cfg" (true classifier-free guidance) or "distilled" (a guidance input, Flux dev)

    @property
    def components(self) -> tuple[str, ...]:
        """The canonical components adapters of this family may touch."""
        return (self.denoiser, *self.text_encoders)

    @property
    def transformer(self) -> bool:
        return self.denoiser == "transformer"


_SD_PIPES = {
    "txt2img": "StableDiffusionPipeline",
    "img2img": "StableDiffusionImg2ImgPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
}
FAMILY_TABLE: dict[str, Family] = {
    "sd1": Family("sd1", "SD 1.x", "unet", ("text_encoder",), ("clip-l",), 512, 7.5, _SD_PIPES),
    "sd2": Family("sd2", "SD 2.x", "unet", ("text_encoder",), ("openclip-h",), 768, 7.5, _SD_PIPES),
    "sdxl": Family(
        "sdxl",
        "SDXL",
        "unet",
        ("text_encoder", "text_encoder_2"),
        ("clip-l", "clip-g"),
        1024,
        5.0,
        {
            "txt2img": "StableDiffusionXLPipeline",
            "img2img": "StableDiffusionXLImg2ImgPipeline",
            "inpaint": "StableDiffusionXLInpaintPipeline",
        },
    ),
    "flux": Family(
        "flux",
        "FLUX.1",
        "transformer",
        ("text_encoder", "text_encoder_2"),
        ("clip-l", "t5"),
        1024,
        3.5,
        {"txt2img": "FluxPipeline", "img2img": "FluxImg2ImgPipeline", "inpaint": "FluxInpaintPipeline"},
        objective="flow",
        blocks=(
            BlockGroup("double", "transformer_blocks", "num_layers"),
            BlockGroup("single", "single_transformer_blocks", "num_single_layers"),
        ),
        guidance_kind="distilled",
    ),
    "sd3": Family(
        "sd3",
        "SD 3.x",
        "transformer",
        ("text_encoder", "text_encoder_2", "text_encoder_3"),
        ("clip-l", "clip-g", "t5"),
        1024,
        7.0,
        {
            "txt2img": "StableDiffusion3Pipeline",
            "img2img": "StableDiffusion3Img2ImgPipeline",
            "inpaint": "StableDiffusion3InpaintPipeline",
        },
        objective="flow",
        blocks=(BlockGroup("joint", "transformer_blocks", "num_layers"),),
    ),
}
#: Every canonical component name, in the order files and reports list them.
ALL_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")


def family(name: str) -> Family:
    """The :class:`Family` called ``name``; a ``KeyError`` naming the known ones otherwise."""
    try:
        return FAMILY_TABLE[name]
    except KeyError:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(FAMILY_TABLE)}") from None


def transformer_block(family_name: str, path: str) -> tuple[str, int] | None:
    """``("double", 3)`` for a transformer module path ``transformer_blocks.3.attn.to_q`` of a Flux base, ``None``
    outside every block (embedders, final layers) and for the UNet families."""
    fam = FAMILY_TABLE.get(family_name)
    if fam is None:
        return None
    for group in fam.blocks:
        prefix = group.path + "."
        if path.startswith(prefix):
            index, _, _ = path[len(prefix) :].partition(".")
            if index.isdigit():
                return group.name, int(index)
    return None


def block_summary(blocks: set[tuple[str, int]] | list[tuple[str, int]]) -> str:
    """``double.0-18, single.0-3, single.7`` for a set of blocks: runs of consecutive indices per group."""
    by_group: dict[str, list[int]] = {}
    for group, index in sorted(blocks):
        by_group.setdefault(group, []).append(index)
    parts = []
    for group, indices in by_group.items():
        start = prev = indices[0]
        for i in [*indices[1:], None]:
            if i is not None and i == prev + 1:
                prev = i
                continue
            parts.append(f"{group}.{start}" if start == prev else f"{group}.{start}-{prev}")
            if i is not None:
                start = prev = i
    return ", ".join(parts) or "none"
