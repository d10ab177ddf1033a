"""docs/cli.md, generated from the commands themselves: ``python -m lorastack.cli.docs > docs/cli.md``.

The page opens with the grammar every command follows, then walks the click command tree: each command's usage,
its help and a table of its arguments and options, as ``--help`` shows them. A test regenerates it and compares.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator

import click

GRAMMAR = """\
# The `lorastack` command line

This page is generated from the commands (`python -m lorastack.cli.docs > docs/cli.md`); a test fails when it and
the commands differ.

## Grammar

Every command follows the same rules, so a flag means one thing wherever it appears.

- **Output.** A command that writes takes `-o/--output`: a FILE for a command that writes one file, a FOLDER for one
  that writes several. Its `--help` says which ("Output file." / "Output folder."). A missing folder is created.
- **Overwriting.** `--force` means one thing only: overwrite the output if it exists. Without it an existing output is
  an error, reported before any work starts. (`caption --force` replaces existing captions; `rm --with-tags` removes a
  version that tags point at, with its tags.)
- **Adapter file format.** `--format` names the adapter file format (`diffusers` or `kohya`) and nothing else.
  `convert --to` is a hidden, deprecated alias of `convert --format`. The caption layout is `caption --layout`
  (`sidecar`, `csv`, `jsonl`).
- **Versions.** `--all-versions` acts on every version of an adapter (`list`, `rm`, `push`, `pull`).
- **Recipes and configs.** No option is called `--config`: a training recipe file is `train --recipe`, a diffusers
  config folder describing a single-file base is `--base-config`.
- **Results as JSON.** Every command that reports a result takes `--json`: it prints one JSON value on stdout (an
  object; for `list`, an array of rows), keys in snake_case, two-space indent, keys sorted, and nothing else on
  stdout.
- **Streams.** Results go to stdout; progress and status lines go to stderr. Progress bars appear only for the user's
  own long work (training, hashing, downloads, generation) and only on a terminal.
- **Errors.** An error is one line on stderr, `Error: ...`, naming the bad value and the valid choices. The exit code
  is 1 for an error lorastack reports (every one derives from `lorastack.LorastackError`) and 2 for a usage error
  (click's: an unknown option, a bad option value, a missing argument). `LORASTACK_RAISE_ERRORS=1` re-raises the error
  with its traceback, for debugging.
- **Quiet by default.** Libraries' logs, warnings and loading bars are silenced; the global `lorastack -v/--verbose`
  (before the command) shows them. Commands call `lorastack.cli.main.quiet_libraries()` before loading models.
"""


def walk(group: click.Group, ctx: click.Context) -> Iterator[tuple[click.Command, click.Context]]:
    """Every command under ``group``, depth first and by name, each with its context."""
    for name in sorted(group.list_commands(ctx)):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = click.Context(command, info_name=name, parent=ctx, **command.context_settings)
        yield command, sub
        if isinstance(command, click.Group):
            yield from walk(command, sub)


def help_text(command: click.Command) -> str:
    """The command's help as ``--help`` shows it: click's ``\\f`` cut and ``\\b`` markers honoured."""
    text = inspect.cleandoc(command.help or command.short_help or "").split("\f")[0]
    return "\n".join(line for line in text.splitlines() if line.strip() != "\b").strip()


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _section(command: click.Command, ctx: click.Context) -> str:
    usage = " ".join([ctx.command_path, *command.collect_usage_pieces(ctx)])
    lines = [f"### `{ctx.command_path}`", "", "```", usage, "```", ""]
    if help_text(command):
        lines += [help_text(command), ""]
    rows = []
    for param in command.get_params(ctx):
        if isinstance(param, click.Argument):
            rows.append((param.make_metavar(ctx), "Argument." if param.required else "Argument (optional)."))
            continue
        record = param.get_help_record(ctx)
        if record is not None:
            rows.append(record)
    if rows:
        lines += ["| Option | Description |", "| --- | --- |"]
        lines += [f"| `{_cell(flags)}` | {_cell(text)} |" for flags, text in rows]
        lines.append("")
    return "\n".join(lines)


def render() -> str:
    """The whole page, with lorastack's own plugins only (what every installation has)."""
    from lorastack.plugins.manager import reset_manager

    from .main import cli

    saved = os.environ.get("LORASTACK_LOAD_PLUGINS")
    os.environ["LORASTACK_LOAD_PLUGINS"] = ""
    reset_manager()
    try:
        root = click.Context(cli, info_name="lorastack", **cli.context_settings)
        parts = [GRAMMAR, "## Commands\n", _section(cli, root)]
        parts += [_section(command, ctx) for command, ctx in walk(cli, root)]
    finally:
        if saved is None:
            del os.environ["LORASTACK_LOAD_PLUGINS"]
        else:
            os.environ["LORASTACK_LOAD_PLUGINS"] = saved
        reset_manager()
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    click.echo(render(), nl=False)
