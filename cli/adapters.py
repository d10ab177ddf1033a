"""``lorastack inspect`` and ``lorastack convert``: adapter files on disk."""

from __future__ import annotations

from pathlib import Path

import click

from lorastack.adapters.constants import FAMILIES, FAMILY_NAMES

from .grammar import echo_json, force_option, format_option, json_option, output_option
from .text import printable

_ALLOW_PICKLE = click.option(
    "--allow-pickle",
    is_flag=True,
    help="Also read pickle files (.ckpt/.pt/.bin), loading them with weights_only=True.",
)


@click.command("inspect")
@click.argument("file", type=click.Path(path_type=Path))
@json_option("everything")
@_ALLOW_PICKLE
def inspect_cmd(file: Path, as_json: bool, allow_pickle: bool) -> None:
    """Show what is inside an adapter FILE: format, base family, layer kinds, ranks, hashes, metadata."""
    from lorastack.adapters import inspect_file

    info = inspect_file(file, allow_pickle=allow_pickle)
    if as_json:
        echo_json(info)
        return
    click.echo(format_inspect(info))


def format_inspect(info: dict) -> str:
    """The human-readable ``inspect`` report."""
    lines = []

    def row(label: str, value) -> None:
        if value not in (None, "", [], {}):
            lines.append(f"{label:<14}{printable(value)}")

    row("file", f"{info['path']} ({_size(info['size'])})")
    row("format", f"{info['format']} (keys: {', '.join(info['key_styles'])})")
    family = FAMILY_NAMES.get(info["family"], info["family"])
    if info["family"] == "unknown" and info["family_candidates"]:
        family += " (could be " + " or ".join(FAMILY_NAMES[c] for c in info["family_candidates"]) + ")"
    row("family", family)
    row("evidence", "; ".join(info["family_evidence"]))
    row("kinds", ", ".join(f"{k} x{n}" for k, n in info["kinds"].items()))
    row("rank", ", ".join(map(str, info["ranks"])))
    alpha = ", ".join(f"{a:g}" for a in info["alphas"])
    if info["alpha_source"] == "assumed":
        alpha = "not stored (diffusers assumes alpha = rank)"
    row("alpha", alpha)
    row("modules", ", ".join(f"{c} {n}" for c, n in info["modules"].items()))
    row("blocks", _blocks(info.get("blocks", [])))
    row("parameters", f"{info['parameters']:,}")
    row("sha256", f"{info['sha256']}  (AutoV2 {info['autov2']})")
    row("tensor sha256", f"{info['tensor_sha256']}  (AutoV3 {info['autov3']})")
    meta = info["metadata"]
    row("title", meta["title"])
    row("trigger words", ", ".join(meta["trigger_words"]))
    row("base model", meta["base_model"])
    row("architecture", meta["architecture"])
    row("resolution", meta["resolution"])
    row("description", meta["description"])
    training = [f"{k}={', '.join(v) if isinstance(v, list) else v}" for k, v in sorted(meta["training"].items())]
    row("training", "; ".join(training))
    if info["unrecognized_keys"]:
        n = len(info["unrecognized_keys"])
        row("ignored keys", f"{n} not understood, e.g. {info['unrecognized_keys'][0]}")
    return "\n".join(lines)


def _blocks(blocks: list[str]) -> str:
    """``["double.0", "double.1", "double.2", "single.5"]`` → ``double.0-2, single.5``."""
    groups: dict[str, list[int]] = {}
    for block in blocks:
        group, _, index = block.partition(".")
        groups.setdefault(group, []).append(int(index))
    parts = []
    for group, indices in groups.items():
        runs: list[list[int]] = []
        for i in indices:
            if runs and i == runs[-1][1] + 1:
                runs[-1][1] = i
            else:
                runs.append([i, i])
        parts.append(f"{group}." + ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs))
    return ", ".join(parts)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@click.command("convert")
@click.argument("file", type=click.Path(path_type=Path))
@format_option(required=True, aliases=("--to",))
@output_option("file", required=True)
@click.option(
    "--family",
    type=click.Choice(FAMILIES),
    default=None,
    help="Base family for family-specific key names (default: probed from the file).",
)
@force_option()
@_ALLOW_PICKLE
@json_option()
def convert_cmd(file: Path, fmt: str, output: Path, family: str | None, force: bool, allow_pickle: bool,
                as_json: bool) -> None:  # fmt: skip
    """Convert an adapter FILE to the diffusers/peft or kohya (A1111/ComfyUI) format, written to -o."""
    from lorastack.adapters import convert_file

    _outside_the_registry(output)
    written = convert_file(file, output, fmt, allow_pickle=allow_pickle, family=family, overwrite=force)
    if as_json:
        echo_json({"source": str(file), "output": str(written), "format": fmt})
        return
    click.echo(f"wrote {printable(written)} ({fmt} format)")


def _outside_the_registry(output: Path) -> None:
    """A conversion written over a registry blob or its index would destroy what the registry keeps."""
    import os

    from lorastack.registry.store import default_root

    root = Path(os.path.realpath(default_root()))
    if Path(os.path.realpath(output)).is_relative_to(root):
        raise click.BadParameter(f"{printable(output)} is inside the registry folder {root}", param_hint="-o/--output")


def register(group: click.Group) -> None:
    group.add_command(inspect_cmd)
    group.add_command(convert_cmd)
