"""``lorastack caption``: write captions for a dataset with a captioner plugin."""

from __future__ import annotations

import click

from .grammar import AliasedOption, echo_json, json_option, output_option


@click.command("caption")
@click.argument("src")
@click.option("--captioner", "captioner_name", required=True, metavar="NAME", help="Captioner plugin: filename, blip…")
@click.option("--prefix", default=None, help="Text each caption starts with (the captioner's prefix option).")
@click.option(
    "--force",
    cls=AliasedOption,
    aliases=("--overwrite",),
    is_flag=True,
    help="Overwrite existing captions if there are any (default: keep them, caption the rest).",
)
@click.option(
    "--layout",
    type=click.Choice(["sidecar", "csv", "jsonl"]),
    default="sidecar",
    show_default=True,
    help="IMAGE.txt next to each image, or one metadata.csv/metadata.jsonl (file_name, text) in SRC.",
)
@output_option("file", "The csv/jsonl file with --layout csv or jsonl (default: in SRC).", default=None)
@click.option("--source", default=None, help="Dataset source plugin (default: the one that recognises SRC).")
@click.option("--option", "pairs", multiple=True, metavar="KEY=VALUE", help="An option of the captioner (repeatable).")
@json_option("the report")
def caption_cmd(src, captioner_name, prefix, force, layout, output, source, pairs, as_json):
    """Caption the images of SRC that have no caption yet (a folder, a zip, a Hugging Face dataset)."""
    from lorastack.core.captioning import caption_dataset, resolve_captioner
    from lorastack.core.data import open_dataset
    from lorastack.core.interfaces import parse_option_pairs

    from .main import quiet_libraries

    if output is not None and layout == "sidecar":
        raise click.UsageError("--output names the csv/jsonl file; add --layout csv or --layout jsonl")
    given = parse_option_pairs(pairs, "--option")
    if prefix is not None:
        if "prefix" in given:
            raise click.UsageError("give the prefix once: --prefix or --option prefix=…")
        given["prefix"] = prefix
    resolve_captioner(captioner_name, given)  # an unknown name or a bad value stops here, before any image is read
    quiet_libraries()
    dataset = open_dataset(src, source)
    for skipped in dataset.skipped:
        click.echo(f"skipped {skipped.source}: {skipped.reason}", err=True)
    report = caption_dataset(
        dataset, captioner_name, given, overwrite=force, output=layout, output_file=output, progress=not as_json
    )
    if as_json:
        echo_json(report.as_dict())
        return
    click.echo(report.summary())


def register(group: click.Group) -> None:
    group.add_command(caption_cmd)
