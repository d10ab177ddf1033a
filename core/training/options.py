"""The engine's options (shared by every trainer) and recipes: TOML files of options, overridden by CLI flags."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import LorastackError
from ..interfaces import Option, PluginOptionError, resolve_options

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class TrainingError(LorastackError):
    """Training cannot start or had to stop: bad options, a bad dataset, NaN loss, out of memory."""


TARGETS = {
    # which modules get LoRA layers; names are peft target-module suffixes
    "attention": ("to_q", "to_k", "to_v", "to_out.0"),
    "attention-ff": ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"),
    "all": (
        "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
        "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
    ),
}  # fmt: skip
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")

ENGINE_OPTIONS: tuple[Option, ...] = (
    Option("steps", "int", 500, "Optimizer steps to train.", minimum=1),
    Option("learning_rate", "float", 1e-4, "UNet LoRA learning rate.", minimum=0, exclusive_minimum=True),
    Option("text_encoder_lr", "float", 0.0, "Train LoRA on the text encoder(s) at this rate (0: frozen).", minimum=0),
    Option("rank", "int", 4, "LoRA rank.", minimum=1),
    Option("alpha", "float", None, "LoRA alpha (default: the rank).", minimum=0, exclusive_minimum=True),
    Option("targets", "choice", "attention", "Modules that get LoRA layers: attention, + feed-forward, + convs.",
           choices=tuple(TARGETS)),
    Option("batch_size", "int", 1, "Images per step.", minimum=1),
    Option("gradient_accumulation", "int", 1, "Micro-batches per optimizer step.", minimum=1),
    Option("mixed_precision", "choice", "no", "fp16/bf16 compute (LoRA weights stay fp32).",
           choices=("no", "fp16", "bf16")),
    Option("gradient_checkpointing", "bool", False, "Trade compute for memory."),
    Option("optimizer", "choice", "adamw", "adamw or adamw8bit (needs bitsandbytes).", choices=("adamw", "adamw8bit")),
    Option("weight_decay", "float", 1e-2, "AdamW weight decay.", minimum=0),
    Option("lr_scheduler", "choice", "constant", "Learning-rate schedule.",
           choices=("constant", "constant_with_warmup", "cosine", "linear")),
    Option("warmup_steps", "int", 0, "Warm-up steps of the schedule.", minimum=0),
    Option("min_snr_gamma", "float", 0.0, "Min-SNR loss weighting gamma (0: off; 5 is usual).", minimum=0),
    Option("noise_offset", "float", 0.0, "Noise offset (0.05–0.1 helps very dark/bright images).", minimum=0),
    Option("prediction_type", "choice", "auto", "Training target: the scheduler's, epsilon or v_prediction.",
           choices=("auto", "epsilon", "v_prediction")),
    Option("max_grad_norm", "float", 1.0, "Gradient clipping norm (0: off).", minimum=0),
    Option("seed", "int", 0, "Seed of everything: data order, noise, timesteps, LoRA init."),
    Option("resolution", "int", 512, "Training resolution (multiple of 8).", minimum=8),
    Option("center_crop", "bool", True, "Center crop (false: random crop, which disables the latent cache)."),
    Option("random_flip", "bool", False, "Flip images horizontally at random."),
    Option("buckets", "bool", False, "Aspect-ratio bucketing instead of square crops."),
    Option("caption_prefix", "str", "", "Text put before every caption."),
    Option("caption_dropout", "float", 0.0, "Probability a caption is dropped (trains unconditional too).",
           minimum=0),
    Option("shuffle_tags", "bool", False, "Shuffle comma-separated tags in captions."),
    Option("keep_tokens", "int", 0, "Tags kept in place at the front when shuffling.", minimum=0),
    Option("repeats", "int", 1, "Times each image is seen per epoch.", minimum=1),
    Option("latents", "choice", "sample", "Each step draws latents from the VAE's distribution, or uses its mean.",
           choices=("sample", "mean")),
    Option("cache_latents", "bool", True, "Cache VAE latents on disk (keyed by image bytes and settings)."),
    Option("cache_text", "bool", True, "Cache text-encoder outputs per caption when the text encoders are frozen."),
    Option("checkpoint_every", "int", 0, "Checkpoint every N steps (0: only at the end).", minimum=0),
    Option("validate_every", "int", 0, "Validation loss and samples every N steps (0: at checkpoints).", minimum=0),
    Option("validation_images", "int", 0, "Images held out for the validation loss.", minimum=0),
    Option("validation_prompts", "str", "", "Prompts sampled at each checkpoint, separated by '|'."),
    Option("sample_steps", "int", 20, "Denoising steps of validation samples.", minimum=1),
    Option("device", "str", None, "cpu, cuda, cuda:1, mps (default: what accelerate picks)."),
)  # fmt: skip


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe file: TOML whose top-level keys are options (and ``trainer``, ``base``, ``data``, ``name``)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainingError(f"recipe {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise TrainingError(f"recipe {str(path)!r} cannot be read: {e}") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):  # [section] tables are for the reader's eyes only
            flat.update(value)
        else:
            flat[key] = value
    return flat


def resolve(
    trainer_options: Sequence[Option], given: Mapping[str, Any], trainer: str
) -> dict[str, Any]:  # fmt: skip
    """The engine's and the trainer's options together, checked; defaults filled in; cross-option rules applied."""
    own = {o.name for o in trainer_options}
    options = tuple(trainer_options) + tuple(o for o in ENGINE_OPTIONS if o.name not in own)
    resolved = resolve_options(options, given, f"trainer {trainer!r}")
    if resolved["resolution"] % 8:
        raise PluginOptionError(f"--resolution {resolved['resolution']} is not divisible by 8; try "
                                f"{resolved['resolution'] // 8 * 8}")  # fmt: skip
    if not 0 <= resolved["caption_dropout"] < 1:
        raise PluginOptionError(f"--caption-dropout {resolved['caption_dropout']} must be in [0, 1)")
    if resolved["mixed_precision"] == "fp16" and _cpu_only(resolved["device"]):
        raise PluginOptionError("--mixed-precision fp16 needs a GPU; on the CPU use bf16 or no")
    if resolved["alpha"] is None:
        resolved["alpha"] = float(resolved["rank"])
    return resolved


def _cpu_only(device: str | None) -> bool:
    import torch

    return device == "cpu" or (
        device is None and not torch.cuda.is_available() and not torch.backends.mps.is_available()
    )


def recipe_fingerprint(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options that define what a run computes (a resumed run must match them); not how often it reports."""
    reporting = {"steps", "checkpoint_every", "validate_every", "validation_prompts", "sample_steps", "device"}
    return {k: _plain(v) for k, v in sorted(options.items()) if k not in reporting}


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def dump_recipe(options: Mapping[str, Any], extra: Mapping[str, Any]) -> str:
    """The resolved recipe as TOML text (what the run folder and the adapter's metadata keep)."""
    lines = []
    for key, value in {**extra, **options}.items():
        if value is None:
            continue
        lines.append(f"{key} = {json.dumps(_plain(value))}")
    return "\n".join(lines) + "\n"
