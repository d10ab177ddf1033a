"""``lorastack recipe import``: the recipe in an image (lorastack's, A1111's or ComfyUI's), adapters resolved."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .grammar import echo_json, force_option, json_option, output_option
from .text import printable


@click.group("recipe")
def recipe_group() -> None:
    """Recipes stored in images (lorastack's, A1111's infotext, ComfyUI's workflow)."""


@recipe_group.command("import")
@click.argument("image", type=click.Path(path_type=Path))
@output_option("file", "Write the recipe there as JSON.")
@force_option()
@json_option("the recipe")
def import_cmd(image: Path, output: Path | None, force: bool, as_json: bool) -> None:
    """Read the recipe in IMAGE and find its adapters in the registry (by hash, else by name)."""
    from lorastack.adapters.outputs import atomic_write_bytes, check_output_file
    from lorastack.core.recipe_import import describe, import_recipe

    if output is not None:
        check_output_file(output, overwrite=force)
    imported = import_recipe(image)
    data = imported.to_json()
    if output is not None:
        atomic_write_bytes(output, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    if as_json:
        echo_json(data)
        return
    for line in describe(imported):
        click.echo(printable(line))
    if output is not None:
        click.echo(f"wrote {output}")


def register(group: click.Group) -> None:
    group.add_command(recipe_group)
