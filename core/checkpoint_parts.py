"""What a transformer-base single file holds, from its safetensors header alone.

FLUX.1 and SD3.x weights travel as one file per part (``flux1-dev.safetensors``, ``clip_l.safetensors``,
``t5xxl_fp16.safetensors``, ``ae.safetensors``) or bundled in one checkpoint the way ComfyUI saves them, each part
under its own prefix::

    model.diffusion_model.         the transformer (BFL keys for Flux, MMDiT keys for SD3)
    text_encoders.clip_l.transformer.   CLIP-L (Hugging Face CLIPTextModel keys)
    text_encoders.clip_g.transformer.   CLIP-G (SD3)
    text_encoders.t5xxl.transformer.    T5 v1.1 XXL encoder (Hugging Face T5EncoderModel keys)
    first_stage_model. / vae.      the VAE (original/LDM keys)

:func:`read_parts` splits a file into :class:`Part` records (kind, prefix, shapes) without reading any weight, so a
wrong or missing part is refused before loading starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import BaseModelError

#: bundle prefix → the part it holds ("clip" parts are told apart by width later; the prefix names the role)
BUNDLE_PREFIXES = (
    ("model.diffusion_model.", "denoiser"),
    ("text_encoders.clip_l.transformer.", "clip"),
    ("text_encoders.clip_g.transformer.", "clip"),
    ("text_encoders.t5xxl.transformer.", "t5"),
    ("first_stage_model.", "vae"),
    ("vae.", "vae"),
)
#: what each kind of part is called in messages
KIND_NAMES = {
    "flux": "a FLUX.1 transformer",
    "sd3": "an SD3 transformer",
    "unet": "a Stable Diffusion UNet",
    "clip": "a CLIP text encoder",
    "t5": "a T5 text encoder",
    "vae": "a VAE",
}
#: ComfyUI's "scaled fp8" files carry per-tensor scales that plain fp8 loading would silently ignore
_SCALED_FP8_MARKERS = ("scaled_fp8", ".scale_weight", ".scale_input")


@dataclass(frozen=True)
class Part:
    """One part of a single file: its kind, the key prefix it sits under, and its tensors' shapes and dtypes."""

    path: Path
    kind: str  # one of KIND_NAMES, or "unknown"
    prefix: str
    shapes: dict[str, tuple[int, ...]] = field(repr=False)  # keys without the prefix
    dtypes: dict[str, str] = field(repr=False)  # safetensors dtype codes ("F8_E4M3", "BF16", …)
    layout: str = "original"  # "original" (BFL/MMDiT/LDM keys) or "diffusers"

    @property
    def width(self) -> int | None:
        """A text encoder's hidden width (CLIP's token embedding, T5's ``shared``); ``None`` for other parts."""
        for key in ("text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight"):
            if key in self.shapes:
                return self.shapes[key][-1]
        for key in ("shared.weight", "encoder.embed_tokens.weight"):
            if key in self.shapes:
                return self.shapes[key][-1]
        return None

    @property
    def label(self) -> str:
        return KIND_NAMES.get(self.kind, "weights lorastack does not recognise")


def read_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """The shapes and dtype codes of a safetensors file's tensors (validated: a truncated file is refused)."""
    from lorastack.adapters.errors import AdapterError
    from lorastack.adapters.files import read_safetensors_header

    if path.suffix.lower() != ".safetensors":
        raise BaseModelError(f"{path}: FLUX.1 and SD3 parts are read from .safetensors files only")
    try:
        tensors = read_safetensors_header(path).tensors
    except AdapterError as e:
        raise BaseModelError(f"{path}: not a readable safetensors file: {e.problem}") from None
    return {k: v.shape for k, v in tensors.items()}, {k: v.dtype for k, v in tensors.items()}


def read_parts(path: str | Path) -> list[Part]:
    """The parts of a safetensors file, bundled ones by prefix and a bare file (one part, no prefix) by its keys."""
    path = Path(path)
    shapes, dtypes = read_header(path)
    for key in shapes:
        if any(marker in key for marker in _SCALED_FP8_MARKERS):
            raise BaseModelError(
                f"{path}: holds scaled fp8 weights ({key!r}); lorastack loads plain fp8/fp16/bf16/fp32 files, "
                "convert it first"
            )
    groups: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        prefix = next((p for p, _ in BUNDLE_PREFIXES if key.startswith(p)), "")
        groups.setdefault(prefix, {})[key[len(prefix) :]] = shape
    parts = []
    for prefix, group in groups.items():
        kind, layout = classify(group)
        group_dtypes = {k[len(prefix) :]: dtypes[k] for k in shapes if k.startswith(prefix)} if prefix else dtypes
        parts.append(Part(path, kind, prefix, group, group_dtypes, layout))
    return parts


def classify(shapes: dict[str, tuple[int, ...]]) -> tuple[str, str]:
    """``(kind, layout)`` of one part's keys (prefix removed)."""
    keys = shapes.keys()
    if "double_blocks.0.img_attn.qkv.weight" in keys:
        return "flux", "original"
    if "joint_blocks.0.x_block.attn.qkv.weight" in keys:
        return "sd3", "original"
    if any(k.startswith(("input_blocks.", "output_blocks.")) for k in keys):
        return "unet", "original"
    if any(k.endswith("embeddings.token_embedding.weight") for k in keys):
        return "clip", "diffusers"
    if "encoder.block.0.layer.0.SelfAttention.q.weight" in keys:
        return "t5", "diffusers"
    if "encoder.conv_in.weight" in keys and "decoder.conv_out.weight" in keys:
        return "vae", "diffusers" if any(k.startswith("encoder.down_blocks.") for k in keys) else "original"
    return "unknown", "original"


def transformer_part(parts: list[Part]) -> Part | None:
    """The transformer of a file's parts (``None`` when it holds none)."""
    return next((p for p in parts if p.kind in ("flux", "sd3")), None)


def variant(part: Part) -> str:
    """The shipped config a transformer part matches: ``flux1-dev`` (it has ``guidance_in``), ``flux1-schnell``,
    ``sd3.5-medium`` (MMDiT-X: a second attention), ``sd3.5-large`` (q/k norms, no second attention) or
    ``sd3-medium``."""
    keys = part.shapes.keys()
    if part.kind == "flux":
        return "flux1-dev" if "guidance_in.in_layer.weight" in keys else "flux1-schnell"
    if any(".attn2." in k for k in keys):
        return "sd3.5-medium"
    if any(".ln_q." in k for k in keys):
        return "sd3.5-large"
    return "sd3-medium"


def bundled_role(part: Part) -> str | None:
    """The text-encoder role a bundled part's prefix names (``clip_l``, ``clip_g``, ``t5xxl``), else ``None``."""
    if part.prefix.startswith("text_encoders."):
        return part.prefix.split(".")[1]
    return None
