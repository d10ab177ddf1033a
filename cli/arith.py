"""``lorastack merge``, ``resize``, ``extract`` and ``bake``: LoRA arithmetic, each with its measured error."""

from __future__ import annotations

import math

import click

from .base_options import base_component_options
from .grammar import Choice, echo_json, force_option, format_option, json_option, output_option
from .text import printable

_DYNAMIC = ("sv_ratio", "sv_fro", "sv_cumulative")


def _check_options(f):
    for option in reversed(
        [
            click.option("--check-prompts", default=None, metavar="'P1|P2'",
                         help="Generate these prompts with the original and the result (same seeds); report PSNR."),
            click.option("--check-seed", type=int, default=0, show_default=True, help="First check seed."),
            click.option("--check-steps", type=click.IntRange(1, 200), default=20, show_default=True,
                         help="Steps per --check-prompts image."),
            click.option("--check-size", type=click.IntRange(8, 4096), default=None,
                         help="Side of the --check-prompts images (default: the base's)."),
        ]
    ):  # fmt: skip
        f = option(f)
    return f


def _config_option(f):
    return click.option(
        "--base-config", "config_dir", type=click.Path(file_okay=False), default=None,
        help="Diffusers config folder describing single-file models (default: lorastack's shipped one).",
    )(f)  # fmt: skip


def _name_option(f):
    return click.option("--name", default=None, help="Also import the result into the registry under NAME.")(f)


def _rank_options(f):
    f = click.option("--target", type=float, default=None, help="The --dynamic criterion's target.")(f)
    f = click.option("--dynamic", type=Choice(_DYNAMIC), default=None,
                     help="Choose each layer's rank by kohya's criterion (--rank caps it).")(f)  # fmt: skip
    return click.option("--rank", type=int, default=None, help="Rank of the result (the cap with --dynamic).")(f)


def _check(prompts, seed, steps, size):
    from lorastack.core.arith_runs import Check

    return Check(prompts, seed, steps, size)


#: the layers the default summary names (the largest relative errors)
WORST_SHOWN = 5


def _verbose_option(f):
    text = "Print every layer's line (kohya's per-module report) before the summary."
    return click.option("-v", "--verbose", is_flag=True, help=text)(f)


def _layer_line(layer: dict) -> str:
    from lorastack.core.arith import LayerReport

    def number(value):
        return float(value) if isinstance(value, str) else value  # the JSON-ready report writes inf as "inf"

    fields = {k: number(layer.get(k)) for k in ("sum_retained", "fro_retained", "max_ratio", "optimal_error")}
    report = LayerReport(layer["layer"], layer["rank"], number(layer["target_norm"]), number(layer["error"]),
                         **fields)  # fmt: skip
    return printable(report.line())


def _ranks(ranks: list[int]) -> str:
    """The distinct ranks, listed when few, else their range (a dynamic resize gives each layer its own)."""
    if not ranks:
        return "-"
    if len(ranks) <= 8:
        return ", ".join(map(str, ranks))
    return f"{ranks[0]} to {ranks[-1]} ({len(ranks)} distinct)"


def _worst(layers: list[dict]) -> list[dict]:
    def key(layer):
        value = layer.get("relative_error")
        return float(value) if isinstance(value, str | int | float) else math.inf  # "inf" in JSON-ready reports

    return sorted(layers, key=key, reverse=True)[:WORST_SHOWN]


def _report(data: dict, as_json: bool, verbose: bool = False) -> None:
    """``--json``: the whole report. Else a summary (the retention, the errors, the ranks, the worst layers);
    ``verbose`` prints every layer's line first, as kohya's scripts do."""
    if as_json:
        echo_json(data)
        return
    layers = data.get("layers") if isinstance(data.get("layers"), list) else None
    if layers is not None:
        if verbose:
            for layer in layers:
                click.echo(_layer_line(layer))
        s = data["summary"]
        if "average_fro_retained" in s:
            click.echo(
                f"Average Frobenius norm retention: {s['average_fro_retained']:.2%} | "
                f"std: {s['fro_retained_std']:0.3f}"
            )
        click.echo(
            f"{data['method']}: {s['layers']} layers, ranks {_ranks(s['ranks'])}"
            + (f" ({s['full_layers']} full differences)" if s.get("full_layers") else "")
            + f", relative error {s['relative_error']:.3e} (worst layer {s['max_layer_relative_error']:.3e})"
        )
        if not verbose and layers:
            shown = _worst(layers)
            click.echo(f"worst {len(shown)} of {len(layers)} layers by relative error (-v: every layer):")
            for layer in shown:
                click.echo("  " + _layer_line(layer))
    for what, left in ((data.get("summary") or {}).get("left_out") or {}).items():
        count = left.get("tensors", left.get("layers"))
        click.echo(
            f"left out ({what.replace('_', ' ')}): {count} changed tensors, joint norm {left['norm']:.3e}, largest "
            f"{printable(left['largest'])} ({left['largest_norm']:.3e})"
        )
    check = data.get("check_prompts") or (data.get("summary") or {}).get("check_prompts")
    if check:
        click.echo(f"check prompts: min PSNR {check['min_psnr_db']} dB, max difference {check['max_difference']}/255")
    line = f"wrote {printable(data['output'])}"
    if data.get("format"):
        line += f" ({data['format']} format)"
    if data.get("registered"):
        line += f", registered as {printable(data['registered'])}"
    click.echo(line)


@click.command("merge")
@click.argument("inputs", nargs=-1, required=True, metavar="A[:W] B[:W]...")
@output_option("file", required=True)
@click.option("--method", type=Choice(("concat", "svd", "ties", "dare", "dare_ties", "magnitude_prune")),
              default="concat", show_default=True, help="concat is exact; others re-factor to --rank.")  # fmt: skip
@click.option(
    "--rank", type=int, default=None, help="Rank of the result (svd, ties, dare; default: the inputs' largest)."
)
@click.option("--density", type=float, default=None, help="Share of values kept (ties, dare, magnitude_prune).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of dare's random masks.")
@click.option("--base", default=None, help="Base model (needed for DoRA inputs and --check-prompts).")
@base_component_options
@_config_option
@format_option(default_help="Default: the first input's (kohya when full layers need it).")
@force_option()
@_name_option
@_check_options
@_verbose_option
@json_option("the error report")
def merge_cmd(inputs, output, method, rank, density, seed, base, fmt, force, name, check_prompts, check_seed,
              check_steps, check_size, verbose, as_json, base_components, config_dir):  # fmt: skip
    """Merge adapters A, B, ... (each FILE or registry reference, :W its weight, block weights as in --lora)."""
    from lorastack.core.arith_runs import Output, run_merge

    out = Output(output, fmt, force, name, base, base_components, config_dir)
    check = _check(check_prompts, check_seed, check_steps, check_size)
    _report(run_merge(list(inputs), out, method, rank, density, seed, check), as_json, verbose)


@click.command("resize")
@click.argument("adapter")
@output_option("file", required=True)
@_rank_options
@click.option("--base", default=None, help="Base model for --check-prompts.")
@base_component_options
@_config_option
@format_option(default_help="Default: the input's.")
@force_option()
@_name_option
@_check_options
@_verbose_option
@json_option("the error report")
def resize_cmd(adapter, output, rank, dynamic, target, base, fmt, force, name, check_prompts, check_seed,
               check_steps, check_size, verbose, as_json, base_components, config_dir):  # fmt: skip
    """Re-factor ADAPTER to a lower rank (--rank R, or --dynamic with --target), reporting what each layer kept."""
    from lorastack.core.arith_runs import Output, run_resize

    out = Output(output, fmt, force, name, base, base_components, config_dir)
    check = _check(check_prompts, check_seed, check_steps, check_size)
    _report(run_resize(adapter, out, rank, dynamic, target, check), as_json, verbose)


@click.command("extract")
@click.option("--base", required=True, help="The model that was fine-tuned: checkpoint or folder.")
@click.option("--tuned", required=True, help="The fine-tuned model: checkpoint or folder.")
@output_option("file", required=True)
@_rank_options
@click.option("--components", default=None, help="Comma-separated: unet, transformer, text_encoder… (default: all).")
@click.option("--clamp-quantile", type=float, default=None, help="Clamp the factors at this quantile (kohya: 0.99).")
@click.option("--min-diff", type=float, default=0.0, show_default=True, help="Leave out layers changed less.")
@base_component_options
@_config_option
@format_option(default_help="Default: kohya.")
@force_option()
@_name_option
@_check_options
@_verbose_option
@json_option("the error report")
def extract_cmd(base, tuned, output, rank, dynamic, target, components, clamp_quantile, min_diff, fmt, force, name,
                check_prompts, check_seed, check_steps, check_size, verbose, as_json, base_components,
                config_dir):  # fmt: skip
    """Extract a LoRA from a fine-tuned model (--tuned) and its --base, with the relative error per layer."""
    from lorastack.core.arith_runs import Output, run_extract

    out = Output(output, fmt, force, name, None, base_components, config_dir)
    check = _check(check_prompts, check_seed, check_steps, check_size)
    result = run_extract(base, tuned, out, rank=rank, dynamic=dynamic, target=target, components=components,
                         clamp_quantile=clamp_quantile, min_diff=min_diff, check=check)  # fmt: skip
    _report(result, as_json, verbose)


@click.command("bake")
@click.argument("base")
@click.option("--lora", "loras", multiple=True, metavar="SOURCE[:SCALE]", help="Adapter of the stack (repeat).")
@click.option("--blocks", default=None, metavar="K=V[:K=V]",
              help="Block weights for every --lora that gives none: lbw=…, single=0, double.3=0.5, te=0.")  # fmt: skip
@output_option("folder", "A diffusers folder; FILE.safetensors: a single-file base rewritten in its own layout; "
               "--as-lora: the adapter file.", required=True)  # fmt: skip
@click.option("--as-lora", is_flag=True, help="Write one adapter equal to the stack instead of a model.")
@click.option("--rank", type=int, default=None, help="With --as-lora: the SVD rank (default: exact concat).")
@base_component_options
@_config_option
@format_option(default_help="With --as-lora. Default: the first adapter's.")
@force_option()
@_name_option
@_check_options
@_verbose_option
@json_option("the result")
def bake_cmd(base, loras, blocks, output, as_lora, rank, fmt, force, name, check_prompts, check_seed, check_steps,
             check_size, verbose, as_json, base_components, config_dir):  # fmt: skip
    """Merge the --lora stack into BASE and write the model (or, --as-lora, one adapter equal to the stack)."""
    from lorastack.core.arith_runs import Output, run_bake

    from .main import quiet_libraries

    quiet_libraries()
    out = Output(output, fmt, force, name, base, base_components, config_dir)
    check = _check(check_prompts, check_seed, check_steps, check_size)
    result = run_bake(base, list(loras), out, blocks=blocks, as_lora=as_lora, rank=rank, check=check)
    _report(result, as_json, verbose)


def register(group: click.Group) -> None:
    for command in (merge_cmd, resize_cmd, extract_cmd, bake_cmd):
        group.add_command(command)
