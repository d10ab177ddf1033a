"""``lorastack link``: a folder of links to the registry's adapters, with the sidecars A1111 or ComfyUI read."""

from __future__ import annotations

from pathlib import Path

import click

from .grammar import echo_json, json_option
from .text import printable


@click.command("link")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--layout", type=click.Choice(["a1111", "comfyui"]), required=True, help="Which UI reads the folder.")
@click.option("--filter", "search", default=None, metavar="TEXT", help="Only adapters whose name, trigger words, "
              "description or base model contain TEXT (as list --search).")  # fmt: skip
@click.option("--family", default=None, help="Only adapters of this base family (sd1, sd2, sdxl, flux, sd3).")
@click.option("--all-versions", is_flag=True, help="Every version (NAME@N.safetensors), not the latest only.")
@json_option("what changed")
def link_cmd(folder, layout, search, family, all_versions, as_json):
    """Make FOLDER (or bring it up to date) a folder of links to the registry's adapter files, with the sidecars the
    UI reads (A1111: NAME.json; ComfyUI-Lora-Manager: NAME.metadata.json). Point the UI's LoRA folder at it; rerun
    after changes. Only files lorastack made there are touched; sidecars edited in the UI are kept."""
    from lorastack.registry import Registry
    from lorastack.registry.linking import link_library

    report = link_library(Registry(), folder, layout, search=search, family=family, all_versions=all_versions)
    if as_json:
        echo_json(report.as_dict())
        return
    click.echo(
        f"{printable(folder)}: {len(report.created)} created, {len(report.updated)} updated, "
        f"{len(report.removed)} removed, {report.unchanged} unchanged"
    )
    for path, why in report.kept.items():
        click.echo(f"kept {printable(path)}: {printable(why)}")
    for ref, why in report.problems.items():
        click.echo(f"not linked {printable(ref)}: {printable(why)}")


def register(group: click.Group) -> None:
    group.add_command(link_cmd)
