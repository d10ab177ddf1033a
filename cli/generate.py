"""``lorastack generate`` and ``lorastack reproduce``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lorastack.core.options import DTYPE_NAMES, SCHEDULERS

from .base_options import base_component_options

_BASE_OPTIONS = [
    click.option("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best one present)."),
    click.option("--dtype", type=click.Choice(DTYPE_NAMES), default="fp32", show_default=True),
    click.option(
        "--base-config",
        "config_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Diffusers config folder describing a single-file --base (default: lorastack's shipped one).",
    ),
    click.option(
        "--prediction-type",
        type=click.Choice(["epsilon", "v_prediction"]),
        default=None,
        help="Override the scheduler's (SD 2.x 512 px models are epsilon).",
    ),
    click.option("--attention-slicing", is_flag=True, help="Compute attention in slices (less memory)."),
    click.option("--vae-tiling", is_flag=True, help="Decode large images in tiles (less memory)."),
    click.option("--cpu-offload", is_flag=True, help="Keep models on the CPU until used (GPU memory)."),
]
_APPLY_OPTIONS = [
    click.option(
        "--apply",
        "apply_mode",
        type=click.Choice(["auto", "merge", "bypass"]),
        default="auto",
        show_default=True,
        help="merge: patch the weights; bypass: add adapters in the forward pass, base untouched; auto: bypass "
        "quantized or offloaded layers, merge the others.",
    ),
    click.option("--compile", "compile_", is_flag=True, help="torch.compile the denoiser once (needs a compiler)."),
    click.option(
        "--quantize",
        type=click.Choice(["torchao-int8", "torchao-fp8", "bnb-nf4", "bnb-int8", "fp8-storage"]),
        default=None,
        help="Load the denoiser quantized (a folder, single-file or Hub base; adapters are bypassed on it). A .gguf "
        "base is quantized already.",
    ),
]


def _print_json(data: dict) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _progress() -> bool:
    """Progress bars for the user's own long work, on a terminal only (they are drawn on stderr)."""
    return sys.stderr.isatty()


def _size(value: str | None) -> tuple[int | None, int | None]:
    if value is None:
        return None, None
    parts = value.lower().split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give WIDTHxHEIGHT, e.g. 512x768, or one number") from None
    if len(numbers) == 1:
        return numbers[0], numbers[0]
    if len(numbers) != 2:
        raise click.BadParameter(f"{value!r}: give WIDTHxHEIGHT, e.g. 512x768, or one number")
    return numbers[0], numbers[1]


def _with(options):
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


@click.command("generate")
@click.argument("prompt")
@click.option("--base", "base", default=None, help="Base model: folder, checkpoint, Hub id or alias.")
@base_component_options
@click.option(
    "--lora",
    "loras",
    multiple=True,
    metavar="[NAME=]SOURCE[:SCALE]",
    help="Adapter to stack (repeat): a file, a registry reference (me/style:v1) or a built-in (toy-style).",
)
@click.option(
    "--stack", "stacks", multiple=True, metavar="NAME",
    help="A named stack (lorastack stack save): its adapters and prompt text are added (repeat).",
)  # fmt: skip
@click.option("--negative", default="", help="Negative prompt.")
# Ranges are checked by lorastack.core.limits.check_options (the bounds live there, for Python callers too).
@click.option("--steps", type=int, default=25, show_default=True)
@click.option(
    "--guidance",
    type=float,
    default=None,
    help="Guidance scale: classifier-free, or FLUX.1 dev's distilled guidance (default: the base's own, from its "
    "lorastack.json or its family).",
)
@click.option("--seed", type=int, default=None, help="Random when left out.")
@click.option("--size", default=None, metavar="WxH", help="Image size (default: the base's own, 64 for the toy).")
@click.option("--num-images", type=int, default=1, show_default=True)
@click.option("--scheduler", type=click.Choice(list(SCHEDULERS)), default=None, help="Default: the model's own.")
@click.option("--init-image", type=click.Path(path_type=Path), default=None, help="Start from this image (img2img).")
@click.option("--mask", type=click.Path(path_type=Path), default=None, help="Repaint where white (inpainting).")
@click.option("--strength", type=float, default=0.75, show_default=True, help="img2img/inpaint strength.")
@click.option("--compare", is_flag=True, help="One grid: base vs each adapter vs the whole stack, same seed.")
@click.option(
    "--trigger", is_flag=True, help="Add the adapters' trigger words (the registry's, else the file's) to the prompt."
)
@click.option("--allow-pickle", is_flag=True, help="Allow pickle checkpoints and adapters (loaded weights_only).")
@_with(_BASE_OPTIONS)
@_with(_APPLY_OPTIONS)
@click.option(
    "-o", "--output", "out_dir", type=click.Path(path_type=Path), default=Path("outputs"), show_default=True,
    help="Output folder (made if missing); images are numbered past what it holds, never overwritten.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: the images' paths and seeds.")
def generate_cmd(prompt, base, loras, stacks, negative, steps, guidance, seed, size, num_images, scheduler, init_image,
                 mask, strength, compare, trigger, allow_pickle, device, dtype, config_dir, prediction_type,
                 attention_slicing, vae_tiling, cpu_offload, out_dir, as_json, base_components, apply_mode,
                 compile_, quantize):  # fmt: skip
    """Generate images for PROMPT with adapters stacked on a base model.

    Adapters come from --lora and from <lora:name:scale> tags in the prompt (registry references work in both:
    --lora me/style:v1:0.8, <lora:me/style:v1:0.8>). Every PNG records its recipe; `lorastack reproduce IMAGE`
    makes it again.
    """
    from lorastack.core.config import default_base
    from lorastack.core.generate import GenerateOptions
    from lorastack.core.runs import BaseChoice, generate_to_folder

    from .main import quiet_libraries

    quiet_libraries()
    if not base and not default_base():
        raise click.UsageError("give --base (a folder, checkpoint, Hub id or alias) or set default_base in the config")
    width, height = _size(size)
    options = GenerateOptions(
        prompt=prompt, negative_prompt=negative, steps=steps, guidance=guidance, width=width, height=height,
        seed=seed, num_images=num_images, scheduler=scheduler, init_image=init_image, mask=mask,
        strength=strength, trigger=trigger,
    )  # fmt: skip
    choice = BaseChoice(
        base, device=device, dtype=dtype, config=config_dir, prediction_type=prediction_type,
        allow_pickle=allow_pickle, attention_slicing=attention_slicing, vae_tiling=vae_tiling,
        cpu_offload=cpu_offload, components=base_components, apply=apply_mode, compile=compile_,
        quantize=quantize,
    )  # fmt: skip
    run = generate_to_folder(
        options, out_dir, base=choice, loras=loras, compare=compare, progress=_progress(),
        warn=lambda line: click.echo(f"Warning: {line}", err=True), stacks=stacks,
    )  # fmt: skip
    if as_json:
        _print_json(run.to_json())
        return
    for image in run.images:
        if image.columns:
            click.echo(f"{image.path}  (columns: {', '.join(image.columns)})")
        else:
            click.echo(f"{image.path}  (seed {image.seed})")


@click.command("reproduce")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--base", default=None, help="Use this base instead of the recorded one (its digest is not checked).")
@click.option("--device", default=None, help="Default: the recorded one when present here, else the best one.")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), default=None,
    help="Output file (default: IMAGE-reproduced.png beside IMAGE).",
)  # fmt: skip
@click.option("--check", is_flag=True, help="Exit with status 1 unless the new image is pixel-identical.")
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: the output, the verdict, the seed.")
def reproduce_cmd(image: Path, base: str | None, device: str | None, output: Path | None, check: bool, force: bool,
                  as_json: bool) -> None:  # fmt: skip
    """Make IMAGE again from the recipe lorastack stored in it, and compare the pixels.

    An image another tool made (A1111 infotext, a ComfyUI workflow) is made again from what it records; it needs
    --base unless lorastack has hashed a file with its model hash, and its adapters in the registry.
    """
    from lorastack.core.runs import reproduce_to_file

    from .main import quiet_libraries

    quiet_libraries()
    run = reproduce_to_file(image, output, base=base, device=device, overwrite=force, progress=_progress())
    if as_json:
        _print_json(run.to_json())
    else:
        verdict = "identical" if run.identical else f"differs (max pixel difference {run.max_difference}/255)"
        click.echo(f"{run.output}: {verdict}")
    if check and not run.identical:
        raise SystemExit(1)


def register(group: click.Group) -> None:
    group.add_command(generate_cmd)
    group.add_command(reproduce_cmd)
