"""``lorastack stack save / list / show / rm``: named stacks of registry adapters, used as ``generate --stack``."""

from __future__ import annotations

import json

import click

from .grammar import echo_json, force_option, json_option
from .text import printable


def _registry():
    from lorastack.registry import Registry

    return Registry()


def _lines(stack) -> list[str]:
    lines = [f"{stack.name}: {len(stack.adapters)} adapter(s)"]
    for a in stack.adapters:
        tag = f", saved from {a.given}" if a.given != a.ref else ""
        lines.append(f"  {a.name} = {a.ref} at {json.dumps(a.scale)}{tag}")
    if stack.prompt:
        lines.append(f"  prompt: {stack.prompt}")
    if stack.negative_prompt:
        lines.append(f"  negative: {stack.negative_prompt}")
    return lines


@click.group("stack")
def stack_group() -> None:
    """Named stacks: registry adapters at scales, with prompt text (generate --stack NAME)."""


@stack_group.command("save")
@click.argument("name")
@click.option(
    "--lora", "loras", multiple=True, metavar="[NAME=]REF[:SCALE]",
    help="A registry adapter (repeat): me/style:v1:0.8; saved as the version it names now (name@N).",
)  # fmt: skip
@click.option("--prompt", default="", help="Text added to generate's prompt.")
@click.option("--negative", default="", help="Text added to generate's negative prompt.")
@force_option("a stack of that name")
@json_option("the stack")
def save_cmd(name, loras, prompt, negative, force, as_json):
    """Save the adapters (and prompt text) as the stack NAME."""
    from lorastack.core.sources import parse_lora_option, unique_names
    from lorastack.registry.stacks import save_stack

    requests = unique_names([parse_lora_option(v) for v in loras])
    stack = save_stack(
        _registry(), name, [(r.name, r.source, r.scale) for r in requests], prompt, negative, overwrite=force
    )
    if as_json:
        echo_json(stack.to_json())
        return
    for line in _lines(stack):
        click.echo(printable(line))


@stack_group.command("list")
@json_option("the stacks")
def list_cmd(as_json):
    """List the saved stacks."""
    from lorastack.registry.stacks import list_stacks

    stacks = list_stacks(_registry())
    if as_json:
        echo_json([s.to_json() for s in stacks])
        return
    if not stacks:
        click.echo("no stacks (lorastack stack save NAME --lora REF:SCALE)")
    for s in stacks:
        adapters = ", ".join(f"{a.ref}:{json.dumps(a.scale)}" for a in s.adapters) or "no adapters"
        click.echo(printable(f"{s.name}  {adapters}"))


@stack_group.command("show")
@click.argument("name")
@json_option("the stack")
def show_cmd(name, as_json):
    """Show the stack NAME."""
    from lorastack.registry.stacks import get_stack

    stack = get_stack(_registry(), name)
    if as_json:
        echo_json(stack.to_json())
        return
    for line in _lines(stack):
        click.echo(printable(line))


@stack_group.command("rm")
@click.argument("name")
@json_option("the removed stack")
def rm_cmd(name, as_json):
    """Remove the stack NAME (its adapters stay in the registry)."""
    from lorastack.registry.stacks import remove_stack

    stack = remove_stack(_registry(), name)
    if as_json:
        echo_json(stack.to_json())
        return
    click.echo(printable(f"removed stack {stack.name}"))


def register(group: click.Group) -> None:
    group.add_command(stack_group)
