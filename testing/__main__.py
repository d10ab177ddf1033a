"""``python -m lorastack.testing``: build offline test models and adapters from the command line."""

from __future__ import annotations

import os
from pathlib import Path

import click

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # its notes about torchvision help no one building a model
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


@click.group()
def main() -> None:
    """Offline models and adapters for trying lorastack without downloading anything."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


@main.command("tiny-base")
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--family",
    type=click.Choice(["sd1", "sdxl", "flux", "flux-schnell", "sd3", "sd3.5"]),
    default="sd1",
    show_default=True,
    help="flux: FLUX.1 dev (guidance embedding); flux-schnell: without; sd3: SD3 Medium; sd3.5: SD3.5 Medium.",
)
@click.option("--seed", type=int, default=0, show_default=True)
def tiny_base(out: Path, family: str, seed: int) -> None:
    """Save a tiny random-weight pipeline (real architecture, a few MB) as a diffusers folder OUT."""
    from .models import save_tiny_pipeline

    if out.exists() and any(out.iterdir()) and not (out / "model_index.json").exists():
        raise click.ClickException(f"{out} exists, is not empty and holds no pipeline; choose another folder")
    save_tiny_pipeline(out, family, seed)
    click.echo(f"saved tiny {family} pipeline to {out}")


@main.command("random-adapter")
@click.argument("base", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["diffusers", "kohya", "bfl"]),
    default="diffusers",
    show_default=True,
    help="bfl: the original FLUX.1 / SD3 layout under diffusion_model. (ComfyUI's keys), for those bases only.",
)
@click.option("--rank", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--alpha", type=float, default=8.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--trigger", default=None, help="Trigger words to record in the file's metadata.")
def random_adapter(base: Path, out: Path, fmt: str, rank: int, alpha: float, seed: int, trigger: str | None) -> None:
    """Make a random LoRA for the pipeline in BASE and save it to OUT, the way peft/diffusers, kohya or ComfyUI
    would (for a FLUX.1 or SD3 base: every transformer Linear, fused qkv / linear1 in the kohya and bfl layouts)."""
    from safetensors.torch import load_file, save_file

    from .adapters import TRANSFORMER_TARGETS, make_kohya_lora, make_peft_lora, save_diffusers_lora
    from .models import load_pipeline

    pipe = load_pipeline(base)
    name = type(pipe).__name__
    family = "flux" if name.startswith("Flux") else "sd3" if name.startswith("StableDiffusion3") else None
    if family is None:
        family = "sdxl" if hasattr(pipe, "text_encoder_2") else "sd1"
    if fmt == "bfl" and family not in ("flux", "sd3"):
        raise click.BadParameter(
            f"bfl is the FLUX.1 / SD3 layout and {base} is an {family} base", param_hint="--format"
        )
    architecture = {
        "sd1": "stable-diffusion-v1/lora",
        "sdxl": "stable-diffusion-xl-v1-base/lora",
        "flux": "flux-1-dev/lora",
        "sd3": "stable-diffusion-v3-medium/lora",
    }[family]
    metadata = {"modelspec.title": out.stem, "modelspec.architecture": architecture}
    if trigger:
        metadata["modelspec.trigger_phrase"] = trigger
    denoiser = "transformer" if family in ("flux", "sd3") else "unet"
    components = (denoiser, "text_encoder")
    if fmt == "diffusers":
        targets = {"unet_targets": TRANSFORMER_TARGETS} if denoiser == "transformer" else {}
        save_diffusers_lora(pipe, out, make_peft_lora(pipe, components, rank=rank, alpha=alpha, seed=seed, **targets))
        from safetensors import safe_open

        with safe_open(str(out), "pt") as f:
            metadata = {**(f.metadata() or {}), **metadata}
        save_file(load_file(str(out)), str(out), metadata=metadata)
    elif denoiser == "transformer":
        from .transformer_adapters import make_original_lora, original_state_dict

        layers = make_original_lora(pipe, family, rank=rank, alpha=alpha, seed=seed)
        save_file(original_state_dict(layers, fmt), str(out), metadata=metadata)
    else:
        save_file(make_kohya_lora(pipe, components, rank=rank, alpha=alpha, seed=seed), str(out), metadata=metadata)
    click.echo(f"saved random {fmt} LoRA (rank {rank}, alpha {alpha:g}) to {out}")


@main.command("single-file")
@click.argument("base", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--bundle", is_flag=True, help="One ComfyUI-style checkpoint with every part, not a file per part.")
@click.option("--fp8", is_flag=True, help="Store the weights as float8_e4m3fn.")
def single_file(base: Path, out: Path, bundle: bool, fp8: bool) -> None:
    """Write the FLUX.1 / SD3 pipeline in BASE as the single files people download (original key layouts) into OUT:
    transformer.safetensors, clip_l / clip_g / t5xxl / ae (or vae) .safetensors, or one checkpoint.safetensors."""
    from .models import load_pipeline
    from .transformer_files import save_bundled_checkpoint, save_transformer_files

    pipe = load_pipeline(base)
    if not hasattr(pipe, "transformer"):
        raise click.ClickException(f"{base} holds a {type(pipe).__name__}; single-file here writes FLUX.1 and SD3")
    if bundle:
        out.mkdir(parents=True, exist_ok=True)
        paths = {"checkpoint": save_bundled_checkpoint(pipe, out / "checkpoint.safetensors", fp8=fp8)}
    else:
        paths = save_transformer_files(pipe, out, fp8=fp8)
    for part, path in paths.items():
        click.echo(f"{part}: {path}")


if __name__ == "__main__":
    main()
