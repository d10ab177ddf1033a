"""The engine's options (shared by every trainer) and recipes: TOML files of options, overridden by CLI flags."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import LorastackError
from ..interfaces import Option, PluginOptionError, resolve_options, shown_value
from .typed import TrainingOptions, typed_options

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
#: --quantize-base: none, or a quantization of lorastack.core.quantized that trains (fp8-storage casts the weights
#: back to fp8 after each layer's forward, under the backward pass that still needs them)
QUANTIZE_CHOICES = ("none", "torchao-int8", "torchao-fp8", "bnb-nf4", "bnb-int8")
#: flow-matching timestep samplers and loss weightings (see ``flow``); ``auto`` is the family's published default
FLOW_SAMPLERS = ("uniform", "sigmoid", "shift", "flux_shift")
LOSS_WEIGHTINGS = ("none", "sigma_sqrt", "cosmap")
#: options that mean something only for flow-matching bases (Flux, SD3): refused on a DDPM base when given
FLOW_ONLY_OPTIONS = ("timestep_sampling", "logit_mean", "logit_std", "discrete_flow_shift", "loss_weighting",
                     "guidance_scale", "max_sequence_length")  # fmt: skip
MAX_T5_LENGTH = 512  # FLUX.1 dev reads 512 T5 tokens, schnell and SD3 256; T5's relative positions allow more

# Every number has a maximum, so a slip (--rank 100000, steps = 1e23) fails before any work with the valid range,
# instead of exhausting memory or time once the models are loaded. The bounds are generous: well past what any run
# uses, below what breaks something.
MAX_STEPS = 10_000_000  # LoRA runs take 10^3–10^5 steps; 10^7 is months of training at several steps a second
MAX_RANK = 1024  # LoRA ranks are 1–256 in practice, and no SD/SDXL layer is wider than 5,120 (rank 100,000: 21 GB)
DEFAULT_RESOLUTION = 512  # when the base's own is not known (SD1's)
MAX_RESOLUTION = 4096  # SDXL trains at 1024; 4096 is 16x its pixels, and buckets reach twice the resolution
MAX_BATCH = 1024  # images per step (and micro-batches per step for gradient accumulation)
MAX_BATCH_PIXELS = 2**28  # batch size x resolution²: 1,024 images of 512², 256 of 1024², 16 of 4096² (3 GiB fp32)
MAX_LEARNING_RATE = 1.0  # LoRA learns at 1e-5–1e-3 with AdamW; at rates over 1 it only diverges
MAX_SEED = 2**32 - 1  # 32-bit seeds, as every SD tool writes them; class images use seed x 100,003 (< 2^63)
MAX_SAMPLE_STEPS = 1000  # schedulers have 1,000 training timesteps: more denoising steps than that are refused
MAX_VALIDATION_PROMPTS = 32  # each is sampled at every checkpoint, and the grid is resolution x prompts wide

ENGINE_OPTIONS: tuple[Option, ...] = (
    Option("steps", "int", 500, "Optimizer steps to train.", minimum=1, maximum=MAX_STEPS),
    Option("learning_rate", "float", 1e-4, "UNet LoRA learning rate.", minimum=0, exclusive_minimum=True,
           maximum=MAX_LEARNING_RATE),
    Option("text_encoder_lr", "float", 0.0, "Train LoRA on the text encoder(s) at this rate (0: frozen).", minimum=0,
           maximum=MAX_LEARNING_RATE),
    Option("rank", "int", 4, "LoRA rank.", minimum=1, maximum=MAX_RANK),
    # the update is scaled by alpha / rank, like a learning rate: alpha is the rank or less in practice
    Option("alpha", "float", None, "LoRA alpha (default: the rank).", minimum=0, exclusive_minimum=True,
           maximum=4 * MAX_RANK),
    Option("targets", "choice", None, "Modules that get LoRA layers: attention, + feed-forward, + convs (UNets) or "
           "+ every linear layer (transformers) (default: attention on a UNet; attention-ff on Flux/SD3, as "
           "diffusers' Flux script).", choices=tuple(TARGETS)),
    Option("lora_layers", "str", "", "Comma-separated module names that get LoRA layers instead of --targets, "
           "matched as name suffixes (diffusers' --lora_layers: attn.to_q,attn.to_k,proj_mlp)."),
    Option("batch_size", "int", 1, "Images per step.", minimum=1, maximum=MAX_BATCH),
    Option("gradient_accumulation", "int", 1, "Micro-batches per optimizer step.", minimum=1, maximum=MAX_BATCH),
    Option("mixed_precision", "choice", "no", "fp16/bf16 compute (LoRA weights stay fp32).",
           choices=("no", "fp16", "bf16")),
    Option("gradient_checkpointing", "bool", False, "Trade compute for memory."),
    Option("optimizer", "choice", "adamw", "adamw or adamw8bit (needs bitsandbytes).", choices=("adamw", "adamw8bit")),
    # QLoRA: the frozen denoiser quantized (lorastack.core.quantized), the LoRA weights in fp32 beside it
    Option("quantize_base", "choice", "none", "Train on the denoiser loaded quantized from a diffusers-folder base "
           "(QLoRA): torchao-int8 (runs on the CPU too), torchao-fp8, bnb-nf4, bnb-int8 (these three on a GPU).",
           choices=QUANTIZE_CHOICES),
    # FSDP2 (lorastack.core.training.sharded) under several processes; one process shards nothing
    Option("shard", "choice", "none", "Under several processes (torchrun, accelerate launch): fsdp shards the "
           "trained components' weights, gradients and optimizer state over the processes (ZeRO-3), fsdp-grad-op "
           "the gradients and optimizer state (ZeRO-2); none: each process holds the whole model (DDP).",
           choices=("none", "fsdp", "fsdp-grad-op")),
    # decoupled decay shrinks weights by lr x decay per step: 0.01–0.1 is usual, over 1 is never meant
    Option("weight_decay", "float", 1e-2, "AdamW weight decay.", minimum=0, maximum=1),
    Option("lr_scheduler", "choice", "constant", "Learning-rate schedule.",
           choices=("constant", "constant_with_warmup", "cosine", "linear")),
    Option("warmup_steps", "int", 0, "Warm-up steps of the schedule.", minimum=0, maximum=MAX_STEPS),
    # 5 is the paper's; the SNR of the least noisy timesteps is ~10^4, so gammas above 1,000 clip nothing
    Option("min_snr_gamma", "float", 0.0, "Min-SNR loss weighting gamma (0: off; 5 is usual).", minimum=0,
           maximum=1000),
    # an offset of 1 is noise as strong as the noise itself; 0.05–0.1 is usual
    Option("noise_offset", "float", 0.0, "Noise offset (0.05–0.1 helps very dark/bright images).", minimum=0,
           maximum=1),
    Option("timestep_sampling", "choice", "auto", "Flow matching (Flux/SD3): how sigma is drawn: uniform, "
           "sigmoid (logit-normal), shift (logit-normal shifted by --discrete-flow-shift), flux_shift (shifted by "
           "the image size as FLUX.1's scheduler); auto: uniform on Flux, shift on SD3.",
           choices=("auto", *FLOW_SAMPLERS)),
    Option("logit_mean", "float", 0.0, "Flow matching: mean of the logit-normal (kohya: 0).", minimum=-10, maximum=10),
    # kohya's --sigmoid_scale; past 10 the logit-normal is two spikes at sigma 0 and 1
    Option("logit_std", "float", 1.0, "Flow matching: std of the logit-normal (kohya's --sigmoid-scale).",
           minimum=0, exclusive_minimum=True, maximum=10),
    Option("discrete_flow_shift", "float", None, "Flow matching: the shift sampler's shift (default: the "
           "scheduler's, 3.0; kohya recommends 3.1582 for FLUX.1 dev).", minimum=0, exclusive_minimum=True,
           maximum=100),
    Option("loss_weighting", "choice", "none", "Flow matching: the SD3 paper's loss weighting by sigma.",
           choices=LOSS_WEIGHTINGS),
    # FLUX.1 dev is guidance-distilled: it trains at guidance 1 (kohya's advice), samples at its 3.5
    Option("guidance_scale", "float", 1.0, "Flux dev: the guidance input while training (schnell has none).",
           minimum=0, maximum=100),
    Option("max_sequence_length", "int", None, "T5 tokens per caption (default: 512 on FLUX.1 dev, 256 on "
           "schnell, 77 on SD3, as the published trainers; at most the tokenizer's).", minimum=1,
           maximum=MAX_T5_LENGTH),
    Option("prediction_type", "choice", "auto", "Training target: the scheduler's, epsilon or v_prediction.",
           choices=("auto", "epsilon", "v_prediction")),
    # no maximum: any finite clipping norm is valid, and a large one only stops clipping
    Option("max_grad_norm", "float", 1.0, "Gradient clipping norm (0: off).", minimum=0),
    Option("seed", "int", 0, "Seed of everything: data order, noise, timesteps, LoRA init.", minimum=0,
           maximum=MAX_SEED),
    Option("resolution", "int", None, "Training resolution, a multiple of 8 (default: the base's own, e.g. 64 for "
           "the toy base, 512 for SD1).", minimum=8, maximum=MAX_RESOLUTION),
    Option("center_crop", "bool", True, "Center crop (--no-center-crop: random crops, which disable the latent "
           "cache)."),
    Option("random_flip", "bool", False, "Flip images horizontally at random."),
    Option("buckets", "bool", False, "Aspect-ratio bucketing instead of square crops."),
    Option("caption_prefix", "str", "", "Text put before every caption."),
    Option("caption_dropout", "float", 0.0, "Probability a caption is dropped (trains unconditional too).",
           minimum=0, maximum=1, exclusive_maximum=True),
    Option("shuffle_tags", "bool", False, "Shuffle comma-separated tags in captions."),
    # a caption has tens of tags; more kept tokens than tags keeps them all
    Option("keep_tokens", "int", 0, "Tags kept in place at the front when shuffling.", minimum=0, maximum=1000),
    # kohya folder repeats are 1–100; an epoch lists images x repeats samples in memory
    Option("repeats", "int", 1, "Times each image is seen per epoch.", minimum=1, maximum=1000),
    Option("latents", "choice", "sample", "Each step draws latents from the VAE's distribution, or uses its mean.",
           choices=("sample", "mean")),
    Option("cache_latents", "bool", True, "Cache VAE latents on disk (keyed by image bytes and settings)."),
    Option("cache_text", "bool", True, "Cache text-encoder outputs per caption when the text encoders are frozen."),
    Option("checkpoint_every", "int", 0, "Checkpoint every N steps (0: only at the end).", minimum=0,
           maximum=MAX_STEPS),
    Option("validate_every", "int", 0, "Validation loss and samples every N steps (0: at checkpoints).", minimum=0,
           maximum=MAX_STEPS),
    # each held-out image costs a few forward passes at every validation
    Option("validation_images", "int", 0, "Images held out for the validation loss.", minimum=0, maximum=10_000),
    Option("validation_prompts", "str", "",
           f"Prompts sampled at each checkpoint, separated by '|' (at most {MAX_VALIDATION_PROMPTS})."),
    Option("sample_steps", "int", 20, "Denoising steps of validation samples.", minimum=1, maximum=MAX_SAMPLE_STEPS),
    Option("device", "str", None, "cpu, cuda, cuda:1, mps (default: the best present: cuda, else mps, else cpu)."),
    # scoring checkpoints with evaluator plugins (lorastack.core.evaluation_training); each evaluation draws
    # prompts x seeds images
    Option("eval_every", "int", 0, "Score the base, then a checkpoint every N steps, with --evaluators; the best "
           "by --eval-metric is marked (0: off).", minimum=0, maximum=MAX_STEPS),
    Option("eval_metric", "str", "", "The metric that picks the best checkpoint (toy.fidelity, clip.clip_i; "
           "default: the evaluators' first)."),
    Option("evaluators", "str", "", "Evaluators of --eval-every, comma-separated (default: the metric's, else "
           "clip)."),
    Option("eval_prompts", "str", "", "Prompts of --eval-every, separated by '|' (default: the instance prompt "
           "and a class prompt)."),
    Option("eval_seeds", "int", 2, "Images per prompt at each evaluation.", minimum=1, maximum=16),
)  # fmt: skip

#: The most bytes a recipe file may hold: recipes are a few hundred bytes of TOML.
MAX_RECIPE_BYTES = 2**20
_RECIPE_TEXT_KEYS = ("trainer", "base", "data", "name")


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe file: TOML whose top-level keys are options (and ``trainer``, ``base``, ``data``, ``name``)."""
    path = Path(path)
    try:
        with path.open("rb") as f:  # a bounded read: the path may be a pipe (--config <(…)) or /dev/zero
            raw = f.read(MAX_RECIPE_BYTES + 1)
        if len(raw) > MAX_RECIPE_BYTES:
            raise TrainingError(f"recipe {str(path)!r} is over the {MAX_RECIPE_BYTES // 2**20} MiB limit of a recipe")
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise TrainingError(f"recipe {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise TrainingError(f"recipe {str(path)!r} cannot be read: {_first_line(str(e))}") from None
    except ValueError as e:  # tomllib raises a bare ValueError for an integer of over 4,300 digits
        raise TrainingError(f"recipe {str(path)!r} cannot be read: {_first_line(str(e).split(':')[0])}") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):  # [section] tables are for the reader's eyes only
            flat.update(value)
        else:
            flat[key] = value
    for key in _RECIPE_TEXT_KEYS:
        if key in flat and not isinstance(flat[key], str):
            raise TrainingError(f"recipe {str(path)!r}: {key} must be text, not {shown_value(flat[key])}")
    return flat


def _first_line(text: str) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= 200 else line[:199] + "…"


def engine_and_trainer_options(trainer_options: Sequence[Option]) -> tuple[Option, ...]:
    """The trainer's options, then the engine's it does not redeclare: the options of a run, in help order."""
    own = {o.name for o in trainer_options}
    return tuple(trainer_options) + tuple(o for o in ENGINE_OPTIONS if o.name not in own)


def resolve(
    trainer_options: Sequence[Option],
    given: Mapping[str, Any],
    trainer: str,
    *,
    base_resolution: int | None = None,
    family: str | None = None,
) -> TrainingOptions:
    """The engine's and the trainer's options together, checked, as a frozen typed object.

    Defaults are filled in (``resolution``: ``base_resolution``, the base's own, else 512; ``device``: the best one
    present; ``alpha``: the rank; ``targets``: attention on a UNet, attention-ff on a transformer) and the rules
    between options applied, those of the base's objective too when ``family`` (the base's) is known.
    """
    options = engine_and_trainer_options(trainer_options)
    resolved = resolve_options(options, given, f"trainer {trainer!r}")
    if resolved["resolution"] is None:
        resolved["resolution"] = base_resolution or DEFAULT_RESOLUTION
    if resolved["resolution"] % 8:
        raise PluginOptionError(f"--resolution {resolved['resolution']} is not divisible by 8; try "
                                f"{resolved['resolution'] // 8 * 8}")  # fmt: skip
    pixels = resolved["batch_size"] * resolved["resolution"] ** 2
    if pixels > MAX_BATCH_PIXELS:
        most = max(1, MAX_BATCH_PIXELS // resolved["resolution"] ** 2)
        raise PluginOptionError(
            f"--batch-size {resolved['batch_size']} at --resolution {resolved['resolution']} is {pixels:,} pixels per "
            f"step, over the {MAX_BATCH_PIXELS:,} limit (1024 x 512²); use --batch-size {most} or less (and "
            "--gradient-accumulation)"
        )
    prompts = [p for p in resolved["validation_prompts"].split("|") if p.strip()]
    if len(prompts) > MAX_VALIDATION_PROMPTS:
        raise PluginOptionError(f"--validation-prompts has {len(prompts)} prompts; the most is "
                                f"{MAX_VALIDATION_PROMPTS}")  # fmt: skip
    if resolved["device"] is None:
        from ..devices import best_device

        resolved["device"] = best_device()
    _check_device(resolved["device"])
    if resolved["mixed_precision"] == "fp16" and resolved["device"].split(":")[0] == "cpu":
        raise PluginOptionError("--mixed-precision fp16 needs a GPU; on the CPU use bf16 or no")
    if resolved["alpha"] is None:
        resolved["alpha"] = float(resolved["rank"])
    from lorastack.adapters.families import FAMILY_TABLE

    known = FAMILY_TABLE.get(family or "")
    if resolved["targets"] is None:
        resolved["targets"] = "attention-ff" if known is not None and known.transformer else "attention"
    typed = typed_options(options, resolved, trainer)
    if known is not None:
        from .flow import check_flow_options

        try:
            check_flow_options(typed, known.name, known.objective == "flow", {str(k).replace("-", "_") for k in given})
        except TrainingError as e:
            raise PluginOptionError(str(e)) from None
    return typed


def _check_device(device: str) -> None:
    import torch

    try:
        torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise PluginOptionError(f"--device {shown_value(device)} is not a device: cpu, cuda, cuda:N, mps") from None


def recipe_fingerprint(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options that define what a run computes (a resumed run must match them); not how often it reports."""
    reporting = {"steps", "checkpoint_every", "validate_every", "validation_prompts", "sample_steps", "device",
                 "eval_every", "eval_metric", "evaluators", "eval_prompts", "eval_seeds",
                 "shard"}  # a checkpoint holds whole tensors: a run resumes sharded or not  # fmt: skip
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
