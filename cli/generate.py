"""``lorastack generate`` and ``lorastack reproduce``."""

from __future__ import annotations

from pathlib import Path

import click

from lorastack.core.options import DTYPE_NAMES, SCHEDULERS

_BASE_OPTIONS = [
    click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or mps."),
    click.option("--dtype", type=click.Choice(DTYPE_NAMES), default="fp32", show_default=True),
    click.option(
        "--config",
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
@click.option("--lora", "loras", multiple=True, metavar="[NAME=]SOURCE[:SCALE]", help="Adapter to stack (repeat).")
@click.option("--negative", default="", help="Negative prompt.")
# Ranges are checked by lorastack.core.generate.check_options (the bounds live there, for Python callers too).
@click.option("--steps", type=int, default=25, show_default=True)
@click.option(
    "--guidance",
    type=float,
    default=None,
    help="Classifier-free guidance scale (default: the base's recommended one, else 7).",
)
@click.option("--seed", type=int, default=None, help="Random when left out.")
@click.option("--size", default=None, metavar="WxH", help="Image size (default: the model's native size).")
@click.option("--num-images", type=int, default=1, show_default=True)
@click.option("--scheduler", type=click.Choice(list(SCHEDULERS)), default=None, help="Default: the model's own.")
@click.option("--init-image", type=click.Path(path_type=Path), default=None, help="Start from this image (img2img).")
@click.option("--mask", type=click.Path(path_type=Path), default=None, help="Repaint where white (inpainting).")
@click.option("--strength", type=float, default=0.75, show_default=True, help="img2img/inpaint strength.")
@click.option("--compare", is_flag=True, help="One grid: base vs each adapter vs the whole stack, same seed.")
@click.option("--trigger", is_flag=True, help="Add the adapters' trigger words to the prompt.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle checkpoints and adapters (loaded weights_only).")
@_with(_BASE_OPTIONS)
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), default=Path("outputs"), show_default=True)
def generate_cmd(prompt, base, loras, negative, steps, guidance, seed, size, num_images, scheduler, init_image, mask,
                 strength, compare, trigger, allow_pickle, device, dtype, config_dir, prediction_type,
                 attention_slicing, vae_tiling, cpu_offload, out_dir):  # fmt: skip
    """Generate images for PROMPT with adapters stacked on a base model.

    Adapters come from --lora and from <lora:name:scale> tags in the prompt. Every PNG records its recipe;
    `lorastack reproduce IMAGE` makes it again.
    """
    from lorastack.adapters.errors import AdapterError
    from lorastack.adapters.outputs import check_output_dir
    from lorastack.core.base import load_base
    from lorastack.core.config import default_base
    from lorastack.core.errors import UnknownAdapterError
    from lorastack.core.generate import GenerateOptions, Generator, check_image_file, check_options
    from lorastack.core.prompts import extract_tags
    from lorastack.core.recipe import next_free, save_png
    from lorastack.core.sources import parse_lora_option, resolve_adapter, unique_names
    from lorastack.paths import data_home

    from .main import quiet_libraries

    quiet_libraries()
    base = base or default_base()
    if not base:
        raise click.UsageError("give --base (a folder, checkpoint, Hub id or alias) or set default_base in the config")
    # everything is checked before any model loads: the home (registry, caches), numbers, tags, inputs, the output
    data_home()
    width, height = _size(size)
    requests = unique_names([parse_lora_option(v) for v in loras])
    options = GenerateOptions(
        prompt=prompt, negative_prompt=negative, steps=steps, guidance=guidance, width=width, height=height,
        seed=seed, num_images=num_images, scheduler=scheduler, init_image=init_image, mask=mask,
        strength=strength, trigger=trigger, adapters={r.name: r.scale for r in requests},
    )  # fmt: skip
    for path, what in ((init_image, "init image"), (mask, "mask")):
        if path is not None:
            check_image_file(path, what)  # a missing file is reported before a mask without an init image
    check_options(options)
    check_output_dir(out_dir)  # missing folders are made (mkdir -p) once the images are ready
    sources = {r.name: resolve_adapter(r.source) for r in requests}
    # adapters named only in <lora:…> tags are found now too, not after the base has loaded
    tagged = {}
    for name in extract_tags(prompt)[1]:
        if name not in sources:
            try:
                tagged[name] = resolve_adapter(name)
            except (UnknownAdapterError, AdapterError) as e:
                given = ", ".join(sources) or "none"
                raise UnknownAdapterError(
                    f"adapter name(s) '{name}' not loaded; loaded adapters: {given} ({e})"
                ) from None
    pipe = load_base(
        base, device=device, dtype=dtype, config=config_dir, prediction_type=prediction_type,
        allow_pickle=allow_pickle, attention_slicing=attention_slicing, vae_tiling=vae_tiling,
        cpu_offload=cpu_offload,
    )  # fmt: skip
    generator = Generator(pipe)
    for request in requests:
        path, label = sources[request.name]
        report = generator.stack.load(request.name, path, allow_pickle=allow_pickle, label=label)
        if not report.complete:
            click.echo(f"warning: {report.summary()}", err=True)
    for name, (path, label) in tagged.items():
        report = generator.stack.load(name, path, allow_pickle=allow_pickle, label=label)
        if not report.complete:
            click.echo(f"warning: {report.summary()}", err=True)
    results = [generator.compare(options)] if compare else generator.generate(options)
    out_dir.mkdir(parents=True, exist_ok=True)
    for result in results:
        stem = f"{result.recipe['seed']}-compare" if compare else str(result.recipe["seed"])
        path = save_png(result.image, next_free(out_dir, stem), result.recipe)
        if compare:
            click.echo(f"{path}  (columns: {', '.join(result.recipe['compare']['columns'])})")
        else:
            click.echo(f"{path}  (seed {result.recipe['seed']})")


@click.command("reproduce")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--base", default=None, help="Use this base instead of the recorded one (its digest is not checked).")
@click.option("--device", default="cpu", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Where to write the new image.")
@click.option("--check", is_flag=True, help="Exit with status 1 unless the new image is pixel-identical.")
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
def reproduce_cmd(image: Path, base: str | None, device: str, output: Path | None, check: bool, force: bool) -> None:
    """Make IMAGE again from the recipe lorastack stored in it, and compare the pixels.

    The new image goes to -o, else IMAGE-reproduced.png beside IMAGE; an existing file is replaced only with --force.
    """
    from lorastack.adapters.outputs import check_output_file
    from lorastack.core.recipe import save_png
    from lorastack.core.reproduce import reproduce
    from lorastack.paths import data_home

    from .main import quiet_libraries

    quiet_libraries()
    data_home()  # the registry and caches: checked before any work
    output = output or image.with_name(image.stem + "-reproduced.png")
    check_output_file(output, overwrite=force)
    result = reproduce(image, base=base, device=device)
    save_png(result.result.image, output, result.result.recipe)
    verdict = "identical" if result.identical else f"differs (max pixel difference {result.max_difference}/255)"
    click.echo(f"{output}: {verdict}")
    if check and not result.identical:
        raise SystemExit(1)


def register(group: click.Group) -> None:
    group.add_command(generate_cmd)
    group.add_command(reproduce_cmd)
