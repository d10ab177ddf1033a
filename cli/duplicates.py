"""``lorastack duplicates``: the same adapter kept more than once in the registry."""

from __future__ import annotations

import click

from .grammar import echo_json, json_option
from .text import printable


@click.command("duplicates")
@click.option(
    "--threshold",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=None,
    metavar="COSINE",
    help="Near-duplicates: the smallest mean cosine of the deltas over the sampled modules (default 0.98).",
)
@click.option("--exact", is_flag=True, help="Only identical files and identical tensors (reads no adapter file).")
@json_option("the groups")
def duplicates_cmd(threshold, exact, as_json):
    """Find identical files, the same tensors under another header, and near-duplicates (the same deltas in another
    dtype, rank or format); each group says why, which version to keep, and the command that removes the extras."""
    from lorastack.registry import Registry
    from lorastack.registry.duplicates import NEAR_THRESHOLD, find_duplicates

    report = find_duplicates(Registry(), threshold=threshold or NEAR_THRESHOLD, near=not exact)
    if as_json:
        echo_json(report.as_dict())
        return
    if not report.groups:
        click.echo("no duplicates" + ("" if exact else f" (near-duplicate threshold {report.threshold:g})"))
    for group in report.groups:
        click.echo(f"{group.kind}: keep {printable(group.keep)}; extra {', '.join(map(printable, group.extras))}")
        click.echo(f"  {printable(group.reason)}")
        click.echo(f"  remove: {printable(group.remove_command())}")
    for ref, why in report.unreadable.items():
        click.echo(f"not compared: {printable(ref)} ({printable(why)})")


def register(group: click.Group) -> None:
    group.add_command(duplicates_cmd)
