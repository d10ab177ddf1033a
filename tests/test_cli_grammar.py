"""One CLI grammar: every command follows docs/cli.md's rules, and docs/cli.md is what the commands say."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from lorastack.adapters.constants import FORMATS
from lorastack.cli.docs import render, walk
from lorastack.cli.main import cli

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
#: Commands that write files outside the registry, and what their -o/--output names.
WRITERS = {
    "lorastack convert": "file",
    "lorastack export": "file",
    "lorastack reproduce": "file",
    "lorastack caption": "file",
    "lorastack generate": "folder",
    "lorastack demo": "folder",
}
_FLAG = re.compile(r"(?:^|[\s,/])(--?[a-z0-9][\w-]*)")


def _commands() -> list[tuple[click.Command, click.Context]]:
    root = click.Context(cli, info_name="lorastack", **cli.context_settings)
    return [(c, ctx) for c, ctx in walk(cli, root) if not isinstance(c, click.Group)]


def _visible(command: click.Command, ctx: click.Context) -> dict[str, tuple[click.Option, str]]:
    """Every flag ``--help`` shows → (its option, its help text)."""
    out = {}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
        if record is not None:
            for flag in _FLAG.findall(record[0]):
                out[flag] = (param, record[1])
    return out


def _writes(path: str) -> str | None:
    if path.startswith("lorastack train "):
        return "folder"  # the run folder: checkpoints, samples, the adapter
    return WRITERS.get(path)


def test_the_walk_finds_every_command():
    paths = {ctx.command_path for _, ctx in _commands()}
    expected = {"inspect", "convert", "import", "list", "show", "tag", "rm", "export", "verify", "gc", "push", "pull",
                "generate", "reproduce", "caption", "dataset", "plugins", "demo"}  # fmt: skip
    assert {f"lorastack {name}" for name in expected} <= paths
    assert any(p.startswith("lorastack train ") for p in paths)  # a subcommand per trainer


@pytest.mark.parametrize("command, ctx", _commands(), ids=lambda v: getattr(v, "command_path", None))
def test_every_command_follows_the_grammar(command, ctx):
    flags = _visible(command, ctx)
    path = ctx.command_path
    wanted = _writes(path)
    if wanted is not None:
        assert "-o" in flags and "--output" in flags, f"{path} writes {wanted}s but has no -o/--output"
    if "--output" in flags:
        assert flags["-o"][0] is flags["--output"][0], f"{path}: -o and --output are different options"
        text = flags["--output"][1]
        kind = wanted or ("file" if text.startswith("Output file.") else "folder")
        assert text.startswith(f"Output {kind}"), f"{path}: --output help must start 'Output {kind}.': {text!r}"
    assert "--json" in flags, f"{path} reports a result but has no --json"
    assert "--config" not in flags, f"{path}: --config is not used (--recipe, --base-config)"
    for retired in ("--to", "--all", "--overwrite", "--out"):
        assert retired not in flags, f"{path} shows {retired}, a retired spelling"
    if "--format" in flags:
        option = flags["--format"][0]
        assert isinstance(option.type, click.Choice) and set(option.type.choices) <= set(FORMATS), (
            f"{path}: --format is the adapter file format only"
        )
    if "--force" in flags:
        assert flags["--force"][1].startswith("Overwrite"), f"{path}: --force only means overwrite the output"


def test_the_group_has_verbose():
    flags = _visible(cli, click.Context(cli, info_name="lorastack"))
    assert "-v" in flags and "--verbose" in flags


def test_docs_cli_md_matches_the_commands():
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/cli.md differs from the commands: python -m lorastack.cli.docs > docs/cli.md"
    )
