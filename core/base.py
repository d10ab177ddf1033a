"""Load a base model: a diffusers folder, a single-file checkpoint, a Hub repo id, or an alias.

Single-file checkpoints load offline: lorastack ships the diffusers configs of SD1.5, SD2.1 and SDXL and the CLIP
tokenizer, and passes them to ``from_single_file`` (which would otherwise download them from the Hub). FLUX.1 and
SD3.x single files (with their parts as separate files or bundled) load through
:mod:`lorastack.core.transformer_bases`, with the shipped configs of FLUX.1 dev/schnell, SD3 Medium and SD3.5
Medium/Large.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import weakref
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from lorastack.adapters.files import PICKLE_SUFFIXES, read_safetensors_header

from .config import alias_components, aliases, cache_dir
from .errors import BaseModelError
from .gguf_parts import GGUF_SUFFIX
from .modules import pipeline_family
from .options import DEVICES, DTYPE_NAMES
from .tokenizers import clip_tokenizer

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.float16, torch.bfloat16)))
CHECKPOINT_SUFFIXES = (".safetensors", GGUF_SUFFIX, *PICKLE_SUFFIXES)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# single-file checkpoint family → (shipped config folder, pipeline class, inpainting class)
_SINGLE_FILE = {
    "sd1": ("sd15", "StableDiffusionPipeline", "StableDiffusionInpaintPipeline"),
    "sd2": ("sd21", "StableDiffusionPipeline", "StableDiffusionInpaintPipeline"),
    "sdxl": ("sdxl", "StableDiffusionXLPipeline", "StableDiffusionXLInpaintPipeline"),
}


@dataclass
class BaseInfo:
    """Where a loaded base came from; recorded in image recipes."""

    source: str
    kind: str  # "folder", "single_file" or "hub"
    location: str  # the resolved path or repo id
    family: str
    revision: str | None = None  # the Hub commit
    dtype: str = "fp32"
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)
    recommended: dict[str, Any] = field(default_factory=dict)  # the folder's lorastack.json "recommended" settings


_INFO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def base_info(pipe) -> BaseInfo | None:
    """The :class:`BaseInfo` of a pipeline made by :func:`load_base` (``None`` for other pipelines)."""
    return _INFO.get(pipe)


#: A diffusers folder may carry this file: ``{"recommended": {"guidance": 1.5, "resolution": 64}}``, the settings its
#: makers recommend. lorastack uses them wherever the user gave none (generate, training, samples, class images).
RECOMMENDED_FILE = "lorastack.json"
_RECOMMENDED = {"guidance": float, "resolution": int}
#: The range of each setting (generation refuses guidance above 100 and sides above 8192 too).
_RECOMMENDED_RANGE = {"guidance": (0.0, 100.0), "resolution": (8, 8192)}
_RECOMMENDED_MAX_BYTES = 1 << 20  # a settings file, not data: a bigger one is refused unread


def recommended(pipe, key: str, default: Any = None) -> Any:
    """The base's recommended value for ``key`` (``guidance``), else ``default``."""
    info = base_info(pipe)
    return info.recommended.get(key, default) if info is not None else default


def guidance_kwargs(pipe) -> dict[str, float]:
    """``guidance_scale=`` the base's recommended guidance for a direct pipeline call ({}: diffusers' default)."""
    value = recommended(pipe, "guidance")
    return {} if value is None else {"guidance_scale": value}


def read_recommended(folder: Path) -> dict[str, Any]:
    """The ``recommended`` settings of a model folder's ``lorastack.json`` ({} when it has none)."""
    file = Path(folder) / RECOMMENDED_FILE
    if not file.is_file():
        return {}
    try:
        if file.stat().st_size > _RECOMMENDED_MAX_BYTES:
            raise BaseModelError(f"{file}: {file.stat().st_size} bytes; a settings file has at most 1 MiB")
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BaseModelError(f"{file}: not readable JSON ({str(e)[:100]})") from None
    settings = data.get("recommended", {}) if isinstance(data, dict) else None
    if not isinstance(settings, dict):
        raise BaseModelError(f"{file}: 'recommended' must be an object of settings ({', '.join(_RECOMMENDED)})")
    out = {}
    for key, value in settings.items():
        kind = _RECOMMENDED.get(key)
        if kind is None:
            raise BaseModelError(f"{file}: unknown setting {key!r}; known: {', '.join(_RECOMMENDED)}")
        low, high = _RECOMMENDED_RANGE[key]
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high or value % 8:
                raise BaseModelError(
                    f"{file}: {key} must be a multiple of 8 in [{low}, {high}], got {repr(value)[:40]}"
                )
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
            raise BaseModelError(f"{file}: {key} must be a float in ({low:g}, {high:g}], got {repr(value)[:40]}")
        out[key] = kind(value)
    return out


def load_base(
    source: str | Path,
    *,
    device: str = "cpu",
    dtype: str = "fp32",
    config: str | Path | None = None,
    prediction_type: str | None = None,
    hf_cache_dir: str | Path | None = None,
    allow_pickle: bool = False,
    attention_slicing: bool = False,
    vae_tiling: bool = False,
    cpu_offload: bool = False,
    text_encoder: str | Path | None = None,
    text_encoder_2: str | Path | None = None,
    text_encoder_3: str | Path | None = None,
    vae: str | Path | None = None,
    t5_tokenizer: str | Path | None = None,
    quantize: str | None = None,
):
    """Load a base model and return an ordinary diffusers pipeline.

    ``source``: a diffusers folder, a single-file checkpoint (``.safetensors``; pickles with ``allow_pickle``), a
    Hub repo id (served from the huggingface_hub cache when offline) or an alias from the user config.
    ``config``: a diffusers folder whose configs describe a single-file checkpoint (default: the shipped config
    of the detected family). ``prediction_type`` overrides the scheduler's (SD 2.x 512 px models use
    ``"epsilon"``). ``hf_cache_dir``: the huggingface_hub cache to use for repo ids. The memory switches are
    diffusers' own.

    FLUX.1 and SD3.x single files (a transformer alone, or a bundled checkpoint): ``text_encoder``,
    ``text_encoder_2``, ``text_encoder_3`` and ``vae`` are component files that replace or supply the parts (see
    :mod:`lorastack.core.transformer_bases`); ``t5_tokenizer`` is a folder with the T5 tokenizer (else the Hub
    cache's). An alias table in the user config may name them too; the ones given here win. A ``.gguf`` file is
    such a transformer, quantized (its layers take adapters in bypass mode).

    ``quantize``: load the denoiser quantized (one of :data:`lorastack.core.quantized.QUANTIZATIONS`).
    """
    if dtype not in DTYPES:
        raise BaseModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    _check_device(device)
    if quantize is not None:
        from .quantized import check_quantization

        check_quantization(quantize)
    torch_dtype = DTYPES[dtype]
    resolved, via_alias = _resolve_alias(str(source))
    given = {"text_encoder": text_encoder, "text_encoder_2": text_encoder_2, "text_encoder_3": text_encoder_3}
    given["vae"] = vae
    parts = {**(alias_components(via_alias) if via_alias else {}), **{k: v for k, v in given.items() if v}}
    t5_tokenizer = t5_tokenizer or parts.pop("t5_tokenizer", None)
    path = Path(resolved).expanduser()
    settings: dict[str, Any] = {}
    record: dict[str, Any] = {}
    if (parts or t5_tokenizer) and not (path.is_file() and path.suffix.lower() in (".safetensors", GGUF_SUFFIX)):
        named = ", ".join("--" + k.replace("_", "-") for k in [*parts, *(["t5_tokenizer"] if t5_tokenizer else [])])
        raise BaseModelError(
            f"{resolved}: {named} complete a FLUX.1 or SD3 single file (.safetensors, .gguf); a folder or Hub repo "
            "brings its own parts"
        )
    if path.is_dir():
        settings = read_recommended(path)  # a broken lorastack.json fails before the weights load
        pipe, info = _load_folder(path, torch_dtype), ("folder", str(path.resolve()), None)
    elif path.is_file():
        pipe, record = _load_single_file(path, torch_dtype, config, allow_pickle, parts, t5_tokenizer, hf_cache_dir)
        info = ("single_file", str(path.resolve()), None)
    elif os.path.lexists(path):  # there, but neither a folder nor a file
        what = "a dangling symbolic link" if not path.exists() else "not a regular file or a folder (a FIFO or device)"
        raise BaseModelError(f"{resolved}: is {what}; a base is a diffusers folder, a checkpoint file or a Hub id")
    elif path.suffix.lower() in CHECKPOINT_SUFFIXES or ("/" in resolved and not _HUB_ID.match(resolved)):
        raise BaseModelError(f"{resolved}: no such file or folder")
    elif _HUB_ID.match(resolved):
        pipe, revision = _load_hub(resolved, torch_dtype, hf_cache_dir)
        info = ("hub", resolved, revision)
    else:
        known = ", ".join(sorted(aliases())) or "none defined"
        raise BaseModelError(
            f"{resolved!r} is not a folder, a checkpoint file, a Hub repo id (owner/name) or an alias "
            f"(aliases: {known})"
        )
    if prediction_type is not None:
        _set_prediction_type(pipe, prediction_type)
    if quantize is not None:
        from .quantized import quantize_base

        pipe = quantize_base(pipe, quantize, path if info[0] == "folder" else None, device)
    _configure(pipe, device, attention_slicing, vae_tiling, cpu_offload)
    kind, location, revision = info
    _INFO[pipe] = BaseInfo(
        source=str(source),
        kind=kind,
        location=location,
        family=pipeline_family(pipe),
        revision=revision,
        dtype=dtype,
        device=device,
        extra={
            **({"alias": via_alias} if via_alias else {}),
            **({"config": str(Path(config).resolve())} if config is not None and kind == "single_file" else {}),
            **({"quantize": quantize} if quantize else {}),
            **record,
        },
        recommended=settings,
    )
    return pipe


def _check_device(device: str) -> None:
    kind = device.split(":")[0]
    if kind not in DEVICES:
        raise BaseModelError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise BaseModelError("device 'cuda' was asked for but torch sees no CUDA GPU here; use --device cpu")
    if kind == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise BaseModelError("device 'mps' was asked for but this torch has no Apple GPU backend; use --device cpu")


BUILTIN_TOY = "toy"


def _resolve_alias(source: str) -> tuple[str, str | None]:
    local = Path(source).expanduser()
    # a folder named "toy" (lorastack's own source tree has one) is taken for the toy base only when it is a pipeline
    if local.exists() and not (source == BUILTIN_TOY and local.is_dir() and not (local / "model_index.json").exists()):
        return source, None
    table = aliases()
    if source in table:
        return table[source], source
    if source == BUILTIN_TOY:  # the toy base shipped inside the package (a user alias of that name wins)
        from lorastack.toy import TOY_DIR

        return str(TOY_DIR), source
    return source, None


def _dtype_kwargs(torch_dtype) -> dict[str, Any]:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (and warns about the old name); older releases know only it."""
    try:
        from diffusers.utils import deprecation_utils

        new = hasattr(deprecation_utils, "_resolve_dtype")
    except ImportError:
        new = False
    return {"dtype" if new else "torch_dtype": torch_dtype}


def _load_folder(path: Path, torch_dtype):
    from diffusers import DiffusionPipeline

    if not (path / "model_index.json").exists():
        raise BaseModelError(f"{path}: a folder, but not a diffusers pipeline (it has no model_index.json)")
    try:
        return DiffusionPipeline.from_pretrained(str(path), local_files_only=True, **_dtype_kwargs(torch_dtype))
    except (OSError, ValueError, KeyError) as e:
        raise BaseModelError(f"{path}: cannot load the pipeline: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# --- single-file checkpoints -----------------------------------------------------------------------------------


def checkpoint_family(path: Path, allow_pickle: bool = False) -> tuple[str, bool]:
    """The family of an original-layout checkpoint and whether it is an inpainting model, from its keys."""
    if path.suffix.lower() == ".safetensors":
        try:
            tensors = read_safetensors_header(path).tensors
        except Exception as e:
            raise BaseModelError(f"{path}: not a readable checkpoint: {_first_line(e)}") from e
        shapes = {name: info.shape for name, info in tensors.items()}
        transformer = _transformer_family(path)
        if transformer is not None:
            return transformer, False
    else:
        if not allow_pickle:
            raise BaseModelError(
                f"{path}: a pickle checkpoint can run code when loaded; convert it to .safetensors or pass "
                "--allow-pickle"
            )
        state = torch.load(str(path), map_location="meta", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else {}
        shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("conditioner.embedders.1.") for k in shapes):
        family = "sdxl"
    elif any(k.startswith("cond_stage_model.model.") for k in shapes):
        family = "sd2"
    elif any(k.startswith("cond_stage_model.transformer.") for k in shapes):
        family = "sd1"
    elif not any(k.startswith("model.diffusion_model.") for k in shapes):
        raise BaseModelError(f"{path}: not a Stable Diffusion checkpoint (no model.diffusion_model.* weights)")
    else:
        raise BaseModelError(f"{path}: has a UNet but no text encoder lorastack recognises (SD1.x, SD2.x, SDXL)")
    conv_in = shapes.get("model.diffusion_model.input_blocks.0.0.weight", (0, 4))
    return family, conv_in[1] == 9


def _transformer_family(path: Path) -> str | None:
    """``flux`` / ``sd3`` for a file holding such a transformer; a text encoder or VAE alone is refused by name."""
    from .checkpoint_parts import KIND_NAMES, read_parts, transformer_part

    parts = read_parts(path)
    part = transformer_part(parts)
    if part is not None:
        return part.kind
    kinds = {p.kind for p in parts}
    if kinds and kinds <= {"clip", "t5", "vae"}:
        held = " and ".join(sorted(KIND_NAMES[k] for k in kinds))
        raise BaseModelError(
            f"{path}: holds {held}, not a base model; give it as --text-encoder/--text-encoder-2/--text-encoder-3/"
            "--vae next to a FLUX.1 or SD3 transformer or checkpoint as the base"
        )
    return None


def checkpoint_variant(path: str | Path) -> str | None:
    """The shipped config a FLUX.1 / SD3 single file matches (``flux1-dev``, ``flux1-schnell``, ``sd3-medium``,
    ``sd3.5-medium``, ``sd3.5-large``); ``None`` for other files."""
    from .checkpoint_parts import read_parts, transformer_part, variant

    part = transformer_part(read_parts(Path(path)))
    return variant(part) if part is not None else None


def shipped_config_dir(family: str, inpainting: bool = False) -> Path:
    """The shipped diffusers config folder for a family (an inpainting variant is written to the cache)."""
    name = _SINGLE_FILE[family][0]
    folder = Path(str(resources.files("lorastack.core") / "configs" / name))
    if not inpainting:
        return folder
    variant = cache_dir() / "configs" / f"{name}-inpainting"
    if not (variant / "model_index.json").exists():
        tmp = variant.with_name(variant.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(folder, tmp)
        unet_config = json.loads((tmp / "unet" / "config.json").read_text())
        (tmp / "unet" / "config.json").write_text(json.dumps({**unet_config, "in_channels": 9}, indent=2))
        index = json.loads((tmp / "model_index.json").read_text())
        index["_class_name"] = _SINGLE_FILE[family][2]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        shutil.rmtree(variant, ignore_errors=True)
        tmp.replace(variant)
    return variant


def _load_single_file(path: Path, torch_dtype, config, allow_pickle: bool, parts, t5_tokenizer, hf_cache_dir):
    """The pipeline of a single file and what to record about it beyond its path."""
    import diffusers

    if path.suffix.lower() in (".safetensors", GGUF_SUFFIX):
        from .checkpoint_parts import read_parts, transformer_part
        from .gguf_parts import read_gguf_parts
        from .transformer_bases import load_transformer_base

        found = read_gguf_parts(path) if path.suffix.lower() == GGUF_SUFFIX else read_parts(path)
        if transformer_part(found) is not None:
            return load_transformer_base(
                path, found, torch_dtype=torch_dtype, config=config, components=parts, t5_tokenizer=t5_tokenizer,
                hf_cache_dir=hf_cache_dir,
            )  # fmt: skip
    if parts or t5_tokenizer:
        raise BaseModelError(f"{path}: not a FLUX.1 or SD3 checkpoint; component files apply to those only")
    family, inpainting = checkpoint_family(path, allow_pickle)
    kwargs: dict[str, Any] = {"local_files_only": True, **_dtype_kwargs(torch_dtype)}
    if config is None:
        config = shipped_config_dir(family, inpainting)
        # the shipped folders hold configs only: hand over the tokenizers lorastack builds offline
        kwargs["tokenizer"] = clip_tokenizer("!" if family == "sd2" else "<|endoftext|>")
        if family == "sdxl":
            kwargs["tokenizer_2"] = clip_tokenizer("!")
    else:
        config = Path(config)
        if not (config / "model_index.json").exists():
            raise BaseModelError(f"{config}: not a diffusers config folder (no model_index.json)")
    if family != "sdxl":
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    cls_name = json.loads((Path(config) / "model_index.json").read_text())["_class_name"]
    cls = getattr(diffusers, cls_name, None) or getattr(diffusers, _SINGLE_FILE[family][2 if inpainting else 1])
    try:
        return cls.from_single_file(str(path), config=str(config), **kwargs), {}
    except Exception as e:  # diffusers raises many types for files it cannot map
        raise BaseModelError(f"{path}: cannot load as a {family} checkpoint: {_first_line(e)}") from e


# --- Hub -------------------------------------------------------------------------------------------------------


def _load_hub(repo_id: str, torch_dtype, hf_cache_dir):
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        pipe = DiffusionPipeline.from_pretrained(repo_id, cache_dir=hf_cache_dir, **_dtype_kwargs(torch_dtype))
    except Exception as e:
        offline = " (offline: HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise BaseModelError(
            f"{repo_id}: not in the Hugging Face cache and not downloadable{offline}; download it once online or "
            f"pass a local folder ({_first_line(e)})"
        ) from e
    cached = try_to_load_from_cache(repo_id, "model_index.json", cache_dir=hf_cache_dir)
    revision = Path(cached).parent.name if isinstance(cached, str) else None
    return pipe, revision


# --- options ---------------------------------------------------------------------------------------------------


def _set_prediction_type(pipe, prediction_type: str) -> None:
    if prediction_type not in ("epsilon", "v_prediction"):
        raise BaseModelError(f"unknown prediction type {prediction_type!r}; choose epsilon or v_prediction")
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction_type)


def _configure(pipe, device: str, attention_slicing: bool, vae_tiling: bool, cpu_offload: bool) -> None:
    if cpu_offload and device == "cpu":
        raise BaseModelError("CPU offload moves models between a GPU and the CPU; it needs --device cuda or mps")
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if attention_slicing:
        pipe.enable_attention_slicing()
    if vae_tiling:
        pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=True)
