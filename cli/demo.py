"""``lorastack demo``: the whole story offline, on the toy base shipped with lorastack."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("-o", "--output", "out", default="lorastack-demo", type=click.Path(path_type=Path),
              show_default=True, help="Output folder (the training images, the run, the grid).")  # fmt: skip
@click.option("--steps", default=300, show_default=True, type=click.IntRange(min=1), help="Training steps.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: the grid, the adapter, the scores.")
def demo_cmd(out, steps, seed, quiet, as_json):
    """Teach the toy base a new concept (a yellow star, "aawxbc") with a LoRA, and compare it with the base.

    The LoRA is registered as demo/aawxbc; a rerun that trains the same tensors reuses that version.
    """
    import json

    from lorastack.toy.demo import run_demo

    from .main import quiet_libraries

    quiet_libraries()  # the demo's own progress shows (unless --quiet); the libraries' loading bars do not

    log = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    result = run_demo(out, steps=steps, seed=seed, progress=not quiet, log=log)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
        return
    click.echo(f"grid: {result.grid} (rows: the token prompt, then a plain prompt; columns: base, adapter, "
               "adapter + toy-style outline at 0.5 and 1.0)")  # fmt: skip
    for line in result.lines():
        click.echo(line)
    click.echo(f"done in {result.seconds:.0f} s")


def register(group: click.Group) -> None:
    group.add_command(demo_cmd)
