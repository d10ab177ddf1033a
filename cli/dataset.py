"""``lorastack dataset``: open a dataset through its source plugin and report what a trainer would see."""

from __future__ import annotations

import click

from .grammar import echo_json, json_option


@click.command("dataset")
@click.argument("location")
@click.option("--source", default=None, help="Dataset source plugin (default: the one that recognises LOCATION).")
@click.option("--option", "pairs", multiple=True, metavar="KEY=VALUE", help="An option of the source (repeatable).")
@json_option("what was found")
def dataset_cmd(location, source, pairs, as_json):
    """Check a dataset: how many images, which have captions, and which files were skipped and why."""
    from lorastack.core.data import one_line, open_dataset
    from lorastack.core.interfaces import parse_option_pairs

    dataset = open_dataset(location, source, parse_option_pairs(pairs, "--option"), allow_empty=True)
    if as_json:
        echo_json({
            "location": dataset.location, "source": dataset.source, "count": len(dataset.items),
            "items": [
                {"source": i.source, "caption": i.caption, "size": list(i.image.size), "concept": i.concept,
                 "mask": i.mask is not None}
                for i in dataset.items
            ],
            "skipped": [{"source": s.source, "reason": s.reason} for s in dataset.skipped],
        })  # fmt: skip
        return
    # names and captions may hold newlines or bytes that are not UTF-8 (a file name is any bytes): one line each
    for item in dataset.items:
        width, height = item.image.size
        click.echo(
            f"{one_line(item.source, 1000)}  {width}x{height}  {one_line(item.caption or '(no caption)', 1000)}"
        )
    for skipped in dataset.skipped:
        click.echo(f"skipped {one_line(skipped.source, 1000)}: {one_line(skipped.reason, 1000)}", err=True)
    click.echo(dataset.summary())


def register(group: click.Group) -> None:
    group.add_command(dataset_cmd)
