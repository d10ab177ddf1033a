"""The options every command shares, written once so a flag means one thing everywhere (docs/cli.md, "Grammar")."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lorastack.adapters.constants import FORMATS

#: The first words of an output option's help: what the command writes.
OUTPUT_HELP = {"file": "Output file.", "folder": "Output folder."}


class AliasedOption(click.Option):
    """An option with deprecated spellings that still work but are left out of ``--help`` and the docs."""

    def __init__(self, *args, aliases: tuple[str, ...] = (), **kwargs):
        self.aliases = tuple(aliases)
        decls = list(args[0]) if args else list(kwargs.pop("param_decls"))
        super().__init__([*decls, *self.aliases], *args[1:], **kwargs)

    def _visible(self) -> list[str]:
        return [o for o in self.opts if o not in self.aliases]

    def get_help_record(self, ctx: click.Context):
        opts = self.opts
        self.opts = self._visible()
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = opts

    def get_error_hint(self, ctx: click.Context) -> str:
        return " / ".join(f"'{o}'" for o in self._visible())


class Choice(click.Choice):
    """click's choice, whose "missing option" message stays on one line like every other error."""

    def get_missing_message(self, param: click.Parameter, ctx: click.Context | None) -> str:
        return f"Choose from: {', '.join(map(str, self.choices))}."


def output_option(kind: str, more: str = "", **kwargs):
    """``-o/--output``: a FILE (``kind="file"``) or a FOLDER (``kind="folder"``), said first in its help."""
    help_text = f"{OUTPUT_HELP[kind]} {more}".strip()
    return click.option(
        "-o",
        "--output",
        type=click.Path(path_type=Path),
        metavar=kind.upper(),
        help=help_text,
        **kwargs,
    )


def force_option(what: str = "the output"):
    """``--force``: overwrite the output if it exists, nothing else."""
    return click.option("--force", is_flag=True, help=f"Overwrite {what} if it exists.")


def json_option(what: str = "the result"):
    """``--json``: one JSON value on stdout and nothing else there."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON (nothing else on stdout).")


def format_option(required: bool = False, default_help: str = "", aliases: tuple[str, ...] = ()):
    """``--format``: the adapter file format, and only that."""
    help_text = "Adapter file format to write: diffusers (diffusers/peft) or kohya (A1111/ComfyUI)."
    return click.option(
        "--format",
        "fmt",
        cls=AliasedOption,
        aliases=aliases,
        type=Choice(FORMATS),
        required=required,
        help=f"{help_text} {default_help}".strip(),
    )


def echo_json(data) -> None:
    """The one JSON style of every ``--json``: two-space indent, sorted keys, paths and dates as text."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
