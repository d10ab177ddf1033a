"""``lorastack train TRAINER``: one subcommand per registered trainer, its options and the engine's as click options.

``lorastack train --help`` lists the trainers; ``lorastack train lora --help`` that trainer's options with their
types, ranges, choices and defaults. A recipe (``--recipe FILE``, TOML) feeds click's ``default_map``, so flags
override it. The older spelling ``lorastack train --trainer lora … [--config RECIPE]`` still works.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from .base_options import COMPONENT_OPTIONS, component_params, pop_components
from .options import click_option

#: the options of every run; a trainer option of the same name is not offered on the command line
RUN_PARAMS = ("base", "data", "name", "output", "recipe", "resume", "source", "quiet", "as_json")
_RECIPE_RUN_KEYS = ("base", "data", "name")


def _run_params() -> list[click.Parameter]:
    return [
        click.Option(["--base"], required=True, metavar="BASE",
                     help="A diffusers folder, a .safetensors checkpoint, a Hub id, an alias or toy."),
        click.Option(["--data"], required=True, metavar="SRC",
                     help="The training images: a folder, a .zip, hf:owner/name, … (lorastack dataset SRC checks "
                          "it)."),
        click.Option(["--name"], metavar="NAME[:TAG]", help="Register the adapter under this name."),
        click.Option(["-o", "--output"], type=click.Path(path_type=Path), metavar="FOLDER",
                     help="Output folder: the run's checkpoints, samples, loss.png and adapter "
                          "[default: LORASTACK_HOME/runs/NAME-TIME]."),
        click.Option(["--recipe"], type=click.Path(path_type=Path), is_eager=True,
                     expose_value=True, callback=_load_recipe, metavar="FILE",
                     help="A TOML recipe of options (and base, data, name); flags override it."),
        click.Option(["--resume"], is_flag=True, help="Continue the run in --output from its last checkpoint."),
        click.Option(["--source"], metavar="NAME", help="The dataset source plugin (default: the one that "
                                                        "recognises SRC)."),
        click.Option(["--quiet"], is_flag=True, help="No progress bar or progress lines."),
        click.Option(["--json", "as_json"], is_flag=True, help="Print the result as one JSON object."),
    ]  # fmt: skip


def _load_recipe(ctx: click.Context, param: click.Parameter, path: Path | None) -> Path | None:
    """Put the recipe's values into ``ctx.default_map`` before the other options read their defaults."""
    if path is None:
        return None
    from lorastack.core.training.options import TrainingError, load_recipe

    values = load_recipe(path)
    trainer = values.pop("trainer", ctx.info_name)
    if trainer != ctx.info_name:
        raise TrainingError(f"recipe {str(path)!r} is for trainer {trainer!r}, not {ctx.info_name!r}; run "
                            f"lorastack train {trainer} --recipe {path}")  # fmt: skip
    known = {p.name for p in ctx.command.params if p.name not in ("recipe", "as_json", "resume", "quiet")}
    table: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            options = ", ".join(sorted(n for n in known if n not in (*_RECIPE_RUN_KEYS, "output", "source")))
            raise TrainingError(f"recipe {str(path)!r}: trainer {ctx.info_name!r} has no option {key!r}; its "
                                f"options: {options}")  # fmt: skip
        table[name] = value
    ctx.default_map = {**(ctx.default_map or {}), **table}
    return path


def trainer_command(trainer) -> click.Command:
    """The ``lorastack train NAME`` command of a registered trainer."""
    from lorastack.core.training.options import engine_and_trainer_options

    params = _run_params() + component_params()
    taken = {*RUN_PARAMS, *COMPONENT_OPTIONS, "json"}  # --json is the as_json parameter
    params += [click_option(o) for o in engine_and_trainer_options(trainer.options) if o.name not in taken]

    def callback(**values: Any) -> None:
        _train(click.get_current_context(), trainer.name, values)

    return click.Command(
        trainer.name, params=params, callback=callback, help=f"{trainer.description}\n\n"
        "Options are this trainer's, then the engine's (every trainer has them). Numbers are checked against "
        "their ranges before any model loads.", short_help=trainer.description,
        epilog=f"Example: lorastack train {trainer.name} --base toy --data photos/ --name me/style --steps 500",
    )  # fmt: skip


class TrainGroup(click.Group):
    """The trainers registered by plugins, as subcommands (loaded when the group is used, not at import)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from lorastack.plugins.manager import get_manager

        return get_manager().names("trainers")

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from lorastack.plugins.manager import get_manager

        manager = get_manager()
        if name not in manager.names("trainers"):
            return None
        return trainer_command(manager.get("trainers", name))

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0] if args else ""
        if self.get_command(ctx, name) is None and not name.startswith("-"):
            known = ", ".join(self.list_commands(ctx)) or "none"
            ctx.fail(f"no trainer {name!r}; trainers: {known} (lorastack plugins shows where they come from)")
        return super().resolve_command(ctx, args)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _older_spelling(ctx, list(args)))


def _older_spelling(ctx: click.Context, args: list[str]) -> list[str]:
    """``--trainer X …`` → ``X …`` and ``--config FILE`` → ``--recipe FILE``; a recipe's trainer when none is named."""
    args = ["--recipe" if a == "--config" else "--recipe=" + a[9:] if a.startswith("--config=") else a for a in args]
    for i, arg in enumerate(args):
        if arg == "--trainer" and i + 1 < len(args):
            return [args[i + 1], *args[:i], *args[i + 2 :]]
        if arg.startswith("--trainer="):
            return [arg.partition("=")[2], *args[:i], *args[i + 1 :]]
    if args and args[0].startswith("-") and not {"-h", "--help"} & set(args):
        recipe = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--recipe"), None)
        recipe = recipe or next((a.partition("=")[2] for a in args if a.startswith("--recipe=")), None)
        if recipe is not None:
            from lorastack.core.training.options import load_recipe

            trainer = load_recipe(recipe).get("trainer")
            if not trainer:
                ctx.fail(f"recipe {recipe!r} names no trainer: lorastack train TRAINER --recipe {recipe}")
            return [trainer, *args]
    return args


@click.group("train", cls=TrainGroup)
def train_group() -> None:
    """Train an adapter with a trainer plugin: lorastack train TRAINER --base BASE --data SRC [OPTIONS].

    lorastack train TRAINER --help lists that trainer's options and the engine's.
    """


def _train(ctx: click.Context, trainer: str, values: dict[str, Any]) -> None:
    from lorastack.core.training.api import train

    from .main import quiet_libraries

    run = {key: values.pop(key) for key in RUN_PARAMS}
    components = pop_components(values)  # --text-encoder …: the parts of a FLUX.1 / SD3 single-file base
    # the options the user set (flags or recipe); the rest keep the core's defaults (the base's resolution, …)
    given = {k: v for k, v in values.items() if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    quiet_libraries()  # the run's own progress shows (unless --quiet); the libraries' loading bars do not
    result = train(trainer, run["base"], run["data"], name=run["name"], output=run["output"], options=given,
                   resume=run["resume"], source=run["source"], progress=not run["quiet"],
                   base_components=components)  # fmt: skip
    if os.environ.get("RANK", "0") not in ("", "0"):
        return  # under accelerate launch / torchrun the main process reports the run, once
    report = result_json(result, trainer)
    if run["as_json"]:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    click.echo(f"adapter: {result.adapter_path}")
    if result.registered:
        click.echo(f"registered: {result.registered}")
    if result.best_checkpoint:
        click.echo(f"best checkpoint (validation loss): {result.best_checkpoint}")
    if result.evaluation and result.evaluation.get("best"):
        best = result.evaluation
        score = f", {best['best_value']:.4f}" if best.get("best_value") is not None else ""
        click.echo(f"best checkpoint ({best['metric']}{score}): {best['best']}")
    if result.processes > 1:
        split = f", sharded ({result.shard}): each held {result.held:.0%} of the trained components" if (
            result.shard != "none") else ", each with the whole model (DDP)"  # fmt: skip
        click.echo(f"processes: {result.processes}{split}")
    click.echo(f"run: {result.run_dir} ({result.steps} steps in {result.seconds:.0f} s; mean loss "
               f"{result.loss_first:.4f} over the first tenth of the steps -> {result.loss_final:.4f} over the "
               "last)")  # fmt: skip


def result_json(result, trainer: str) -> dict[str, Any]:
    """The result of a run as ``--json`` prints it."""

    def number(value: float) -> float | None:
        return None if math.isnan(value) else round(value, 6)

    return {
        "adapter_path": str(result.adapter_path),
        "ref": result.registered,
        "run_dir": str(result.run_dir),
        "trainer": trainer,
        "steps": result.steps,
        "loss_first": number(result.loss_first),
        "loss_final": number(result.loss_final),
        "seconds": round(result.seconds, 3),
        "best_checkpoint": result.best_checkpoint,
        "validation_losses": {str(k): v for k, v in sorted(result.validation_losses.items())},
        "evaluation": result.evaluation,
        "processes": result.processes,
        "shard": result.shard,
        "held": round(result.held, 4),
    }


def register(group: click.Group) -> None:
    group.add_command(train_group)
