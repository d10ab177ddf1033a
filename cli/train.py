"""``lorastack train``: train an adapter with a trainer plugin; ``--trainer X --help`` lists that trainer's options."""

from __future__ import annotations

import click

from lorastack.core.interfaces import PluginOptionError

FIXED = """Options of every run:
  --trainer NAME        lora, dreambooth, … (lorastack plugins lists them)
  --base BASE           a diffusers folder, a .safetensors checkpoint, a Hub id or an alias
  --data SRC            a folder, a .zip, hf:owner/name, … (lorastack dataset SRC checks it)
  --name NAME[:TAG]     register the adapter under this name
  --output RUN_DIR      the run folder (default: LORASTACK_HOME/runs/NAME-TIME)
  --config RECIPE.toml  options from a recipe file; flags override it
  --resume              continue the run in --output from its last checkpoint
  --source NAME         the dataset source plugin (default: the one that recognises SRC)
  --token WORD          dreambooth: the rare token (e.g. aawxbc)
  --class WORD          dreambooth: the subject's class (e.g. figurine)
  --quiet               no progress bar
"""


def _parse_extra(args: list[str]) -> dict[str, str]:
    """``--rank 8 --random-flip --caption-prefix "a photo of"`` → option dict (a bare flag means true)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise PluginOptionError(f"unexpected argument {arg!r}; options are written --name value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
                i += 1
            else:
                value = "true"
        out[key.replace("-", "_")] = value
        i += 1
    return out


def _options_help(trainer_name: str) -> str:
    from lorastack.core.training.options import ENGINE_OPTIONS
    from lorastack.plugins.manager import get_trainer

    trainer = get_trainer(trainer_name)
    lines = [f"Trainer {trainer.name}: {trainer.description}", "", "Its options:"]
    for option in trainer.options:
        lines.append(_option_line(option))
    lines += ["", "Engine options (every trainer):"]
    own = {o.name for o in trainer.options}
    lines += [_option_line(o) for o in ENGINE_OPTIONS if o.name not in own]
    return "\n".join(lines)


def _option_line(option) -> str:
    kind = "|".join(option.choices) if option.choices else option.type.upper()
    notes = [f"range {option.range_text()}"] if option.range_text() else []
    if option.default not in (None, ""):
        notes.append(f"default: {option.default}")
    tail = f" [{'; '.join(notes)}]" if notes else ""
    return f"{f'  --{option.flag} {kind}':<36} {option.help}{tail}"


@click.command(
    "train", context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False
)
@click.option("--trainer", default=None)
@click.option("--base", default=None)
@click.option("--data", default=None)
@click.option("--name", default=None)
@click.option("--output", default=None)
@click.option("--config", "recipe", default=None)
@click.option("--resume", is_flag=True)
@click.option("--source", default=None)
@click.option("--token", default=None)
@click.option("--class", "class_name", default=None)
@click.option("--quiet", is_flag=True)
@click.option("--help", "show_help", is_flag=True)
@click.pass_context
def train_cmd(ctx, trainer, base, data, name, output, recipe, resume, source, token, class_name, quiet, show_help):
    """Train an adapter: lorastack train --trainer lora --base BASE --data SRC --name NAME [--OPTION VALUE …]."""
    if show_help:
        click.echo(ctx.get_usage() + "\n\n" + FIXED)
        if trainer:
            click.echo(_options_help(trainer))
        else:
            click.echo("lorastack train --trainer NAME --help lists that trainer's own options.")
        return
    from lorastack.core.training.api import train
    from lorastack.core.training.options import load_recipe

    from .main import quiet_libraries

    quiet_libraries()  # the run's own progress shows (unless --quiet); the libraries' loading bars do not

    options = _parse_extra(ctx.args)
    if token is not None:
        options["token"] = token
    if class_name is not None:
        options["class_name"] = class_name
    file_values = load_recipe(recipe) if recipe else {}
    trainer = trainer or file_values.get("trainer")
    base = base or file_values.get("base")
    data = data or file_values.get("data")
    name = name or file_values.get("name")
    missing = [flag for flag, value in (("--trainer", trainer), ("--base", base), ("--data", data)) if not value]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (on the command line or in --config)")
    result = train(trainer, base, data, name=name, output=output, options=options, recipe=recipe, resume=resume,
                   source=source, progress=not quiet)  # fmt: skip
    click.echo(f"adapter: {result.adapter_path}")
    if result.registered:
        click.echo(f"registered: {result.registered}")
    if result.best_checkpoint:
        click.echo(f"best checkpoint (validation loss): {result.best_checkpoint}")
    first, last = result.losses[0] if result.losses else float("nan"), result.losses[-1] if result.losses else 0
    click.echo(f"run: {result.run_dir} ({result.steps} steps, loss {first:.4f} -> {last:.4f})")


def register(group: click.Group) -> None:
    group.add_command(train_cmd)
