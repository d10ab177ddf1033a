"""``lorastack edit / enrich``: what is known about each version, written by the user or found outside."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .grammar import echo_json, json_option
from .library import _terminal
from .text import printable


@click.command("edit")
@click.argument("ref")
@click.option("--trigger", "triggers", multiple=True, metavar="WORDS",
              help="A trigger-word group, comma-separated words used together; repeat for more groups (they replace "
                   "the groups there are).")  # fmt: skip
@click.option("--weight", type=float, default=None, help="Preferred weight (-10…10).")
@click.option("--negative", default=None, help="Negative prompt text to use with it.")
@click.option("--note", default=None, help="Notes.")
@click.option("--lineage", default=None, help="Base-model lineage label (Pony, Illustrious, NoobAI, FLUX.1-dev, …).")
@click.option("--license", "license_", default=None, help="License.")
@click.option("--keyword", "keywords", multiple=True, help="A keyword tag (list --tag finds it); repeat for more.")
@click.option("--preview", "previews", multiple=True, type=click.Path(path_type=Path), metavar="IMAGE",
              help="Add a preview image (PNG, JPEG or WebP); repeat for more.")  # fmt: skip
@click.option("--clear", "clear", multiple=True, metavar="FIELD", help="Remove a field's value; repeat for more.")
@json_option("the fields changed")
def edit_cmd(ref, triggers, weight, negative, note, lineage, license_, keywords, previews, clear, as_json):
    """Write what you know about a version: REF is NAME, NAME:TAG or NAME@N. Your values are never replaced by
    lorastack enrich or a scan's sidecars."""
    from lorastack.adapters.metadata import split_words
    from lorastack.registry import Registry
    from lorastack.registry.metadata import FIELDS, set_metadata
    from lorastack.registry.previews import add_preview, read_preview_file

    for name in clear:
        if name not in FIELDS:
            raise click.BadParameter(f"{name!r} is not a field; fields: {', '.join(FIELDS)}", param_hint="--clear")
    values = {
        "trigger_groups": [split_words(t) for t in triggers] if triggers else None,
        "weight": weight, "negative": negative, "notes": note, "lineage": lineage, "license": license_,
        "tags": list(keywords) if keywords else None,
    }  # fmt: skip
    values = {k: v for k, v in values.items() if v is not None}
    if weight is not None and weight != weight:
        raise click.BadParameter("nan is not a number", param_hint="--weight")
    if not values and not clear and not previews:
        raise click.UsageError("say what to write: --trigger, --weight, --negative, --note, --lineage, --license, "
                               "--keyword, --preview or --clear")  # fmt: skip
    registry = Registry()
    images = [read_preview_file(p) for p in previews]  # every file checked before anything is written
    report = set_metadata(registry, ref, {**values, **{name: None for name in clear}}, "user")
    added = [add_preview(registry, report.ref, data, "user").sha256 for data in images]
    if as_json:
        echo_json({**report.as_dict(), "previews": added})
        return
    changed = report.changed + ([f"{len(added)} preview(s)"] if added else [])
    click.echo(f"{report.ref}: " + (", ".join(changed) + " written" if changed else "nothing changed"))


@click.command("enrich")
@click.argument("refs", nargs=-1)
@click.option("--source", "sources", multiple=True, metavar="NAME",
              help="A metadata source (civitai, hub, a plugin's); repeat for more. Default: every one.")  # fmt: skip
@click.option("--replace-user-values", "overwrite", is_flag=True,
              help="Let the sources replace values you wrote (default: only fill what is missing).")  # fmt: skip
@click.option("--no-previews", is_flag=True, help="Do not download preview images.")
@json_option("the summary")
def enrich_cmd(refs, sources, overwrite, no_previews, as_json):
    """Look versions up by hash in metadata sources and fill what is missing (REFS: these versions; default: every
    version a source has told nothing yet). Each value records where it came from; a source that fails or times out
    is reported and never stops local use."""
    from lorastack.core.enrich import enrich
    from lorastack.registry import Registry

    progress = _Progress(enabled=not as_json and _terminal())
    try:
        report = enrich(Registry(), list(refs) or None, list(sources) or None, overwrite=overwrite,
                        previews=not no_previews, on_progress=progress.update)  # fmt: skip
    finally:
        progress.close()
    if as_json:
        echo_json(report.as_dict())
        return
    for s in report.sources:
        line = (f"{s.source}: asked about {s.asked}, found {s.found}, unknown {s.unknown}, failed {s.failed}; "
                f"{s.filled} value(s) filled, {s.previews} preview(s)")  # fmt: skip
        if s.kept:
            line += f", {s.kept} of your values kept"
        click.echo(line + (" (timed out)" if s.timed_out else ""))
        for error in s.errors[:20]:
            click.echo(f"  {printable(error)}")
        if len(s.errors) > 20:
            click.echo(f"  … and {len(s.errors) - 20} more (--json lists them all)")
    for ref, by_source in sorted(report.versions.items()):
        for source, fields in by_source.items():
            click.echo(f"{printable(ref)}: {', '.join(fields)} from {source}")


class _Progress:
    """A bar on stderr (a terminal only) per source while its answers are stored and previews downloaded."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar, self.source = enabled, None, None

    def update(self, source: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None or source != self.source:
            self.close()
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"enrich {source}", unit="version", file=sys.stderr,
                            dynamic_ncols=True)  # fmt: skip
            self.source = source
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def register(group: click.Group) -> None:
    group.add_command(edit_cmd)
    group.add_command(enrich_cmd)
