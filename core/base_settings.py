"""A base model's own settings (resolution, guidance), read without loading its weights.

Where they come from, first match wins:

1. the base folder's ``lorastack.json`` ``{"recommended": {"resolution": 64, "guidance": 1.5}}``;
2. for a diffusers folder, its UNet ``sample_size`` times the VAE's scale factor (what diffusers itself draws at);
3. the known resolution and guidance of the base's family (SD1 512, SD2 768, SDXL, Flux and SD3 1024).

:func:`resolution_warning` says when a resolution is far from the base's (the UNet then works far from what it
learned, and a small base upscaled costs ~ the square of the ratio in time).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .base import RECOMMENDED_FILE, read_recommended
from .errors import BaseModelError

#: family → (resolution, diffusers' default guidance for its pipeline)
FAMILY_SETTINGS: dict[str, tuple[int, float]] = {
    "sd1": (512, 7.5),
    "sd2": (768, 7.5),
    "sdxl": (1024, 5.0),
    "flux": (1024, 3.5),
    "sd3": (1024, 7.0),
}
DEFAULT_FAMILY = "sd1"
#: a resolution more than this factor above or below the base's is warned about
FAR_FACTOR = 2.0


@dataclass(frozen=True)
class BaseSettings:
    """A base's default generation and training settings and where each came from."""

    resolution: int
    guidance: float
    family: str
    resolution_from: str  # "lorastack.json", "model config" or "family"
    guidance_from: str


def base_settings(source: str | Path | None) -> BaseSettings:
    """The settings of a base named as the user names it (folder, checkpoint, Hub id, alias or ``toy``).

    Nothing heavy is loaded: only JSON configs (a checkpoint's header for single files). An unknown or unreachable
    base gets the SD1 family's settings; loading it later reports what is wrong with it.
    """
    if source is None:
        return _from_family(DEFAULT_FAMILY)
    path = _resolve(str(source))
    if path is not None and path.is_dir():
        return folder_settings(path)
    if path is not None and path.is_file():
        return _from_family(_checkpoint_family(path))
    return _from_family(_hub_family(str(source)))


def folder_settings(folder: str | Path) -> BaseSettings:
    """The settings of a diffusers folder (its ``lorastack.json``, else its configs, else its family)."""
    folder = Path(folder)
    family = folder_family(folder)
    resolution, guidance = FAMILY_SETTINGS[family]
    res_from = guid_from = "family"
    native = _native_resolution(folder)
    if native is not None:
        resolution, res_from = native, "model config"
    recommended = read_recommended(folder)
    if "resolution" in recommended:
        resolution, res_from = recommended["resolution"], RECOMMENDED_FILE
    if "guidance" in recommended:
        guidance, guid_from = recommended["guidance"], RECOMMENDED_FILE
    return BaseSettings(resolution, guidance, family, res_from, guid_from)


def pipe_settings(pipe) -> BaseSettings:
    """The settings of a loaded pipeline (its folder's ``lorastack.json`` when :func:`load_base` made it)."""
    from .base import base_info
    from .modules import pipeline_family

    info = base_info(pipe)
    family = info.family if info is not None else pipeline_family(pipe)
    resolution, guidance = FAMILY_SETTINGS.get(family, FAMILY_SETTINGS[DEFAULT_FAMILY])
    res_from = guid_from = "family"
    unet, vae = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None), getattr(pipe, "vae", None)
    if unet is not None and vae is not None and isinstance(unet.config.get("sample_size"), int):
        scale = 2 ** (len(vae.config.get("block_out_channels", (0,) * 4)) - 1)
        resolution, res_from = unet.config["sample_size"] * scale, "model config"
    recommended = info.recommended if info is not None else {}
    if "resolution" in recommended:
        resolution, res_from = recommended["resolution"], RECOMMENDED_FILE
    if "guidance" in recommended:
        guidance, guid_from = recommended["guidance"], RECOMMENDED_FILE
    return BaseSettings(resolution, guidance, family, res_from, guid_from)


def resolution_warning(resolution: int, settings: BaseSettings) -> str | None:
    """One line when ``resolution`` is more than :data:`FAR_FACTOR` times off the base's, else ``None``."""
    ratio = resolution / settings.resolution
    if 1 / FAR_FACTOR <= ratio <= FAR_FACTOR:
        return None
    return (
        f"Warning: resolution {resolution} is {ratio:.3g}x the base's {settings.resolution} px "
        f"(from its {settings.resolution_from}); results and speed suffer far from it"
    )


def warn_resolution(resolution: int, settings: BaseSettings, stream: TextIO | None = None) -> bool:
    """Write :func:`resolution_warning`'s line to stderr (or ``stream``); whether there was one."""
    line = resolution_warning(resolution, settings)
    if line is not None:
        print(line, file=stream or sys.stderr)
    return line is not None


def folder_family(folder: Path) -> str:
    """The family of a diffusers folder from its ``model_index.json`` and UNet config (SD1 when unknown)."""
    index = _json(folder / "model_index.json")
    name = str(index.get("_class_name", ""))
    if "Flux" in name:
        return "flux"
    if "StableDiffusion3" in name:
        return "sd3"
    unet = _json(folder / "unet" / "config.json")
    if "XL" in name or index.get("text_encoder_2") or unet.get("addition_embed_type") == "text_time":
        return "sdxl"
    if unet.get("cross_attention_dim") == 1024 or unet.get("use_linear_projection"):
        return "sd2"
    return DEFAULT_FAMILY


def _native_resolution(folder: Path) -> int | None:
    unet, vae = _json(folder / "unet" / "config.json"), _json(folder / "vae" / "config.json")
    unet = unet or _json(folder / "transformer" / "config.json")  # SD3 transformers carry a sample_size; Flux not
    size, blocks = unet.get("sample_size"), vae.get("block_out_channels")
    if isinstance(size, int) and not isinstance(size, bool) and isinstance(blocks, list) and blocks:
        return size * 2 ** (len(blocks) - 1)
    return None


def _json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _from_family(family: str) -> BaseSettings:
    resolution, guidance = FAMILY_SETTINGS.get(family, FAMILY_SETTINGS[DEFAULT_FAMILY])
    return BaseSettings(resolution, guidance, family, "family", "family")


def _resolve(source: str) -> Path | None:
    from .base import _resolve_alias  # one place knows the aliases and the shipped toy base

    path = Path(_resolve_alias(source)[0]).expanduser()
    return path if path.exists() else None


def _checkpoint_family(path: Path) -> str:
    from .base import checkpoint_family

    try:
        return checkpoint_family(path)[0]
    except BaseModelError:  # a pickle or an unreadable file: loading it reports why
        return DEFAULT_FAMILY


def _hub_family(repo_id: str) -> str:
    """The family of a Hub repo from its configs in the huggingface_hub cache (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        index = try_to_load_from_cache(repo_id, "model_index.json")
    except Exception:  # not a repo id at all
        return DEFAULT_FAMILY
    if isinstance(index, str):
        return folder_family(Path(index).parent)
    lowered = repo_id.lower()
    for key, family in (
        ("flux", "flux"),
        ("stable-diffusion-3", "sd3"),
        ("xl", "sdxl"),
        ("stable-diffusion-2", "sd2"),
    ):
        if key in lowered:
            return family
    return DEFAULT_FAMILY
