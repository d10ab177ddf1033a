"""``lorastack import / list / show / tag / rm / export / verify / gc``: the local registry."""

from __future__ import annotations

import time
from pathlib import Path

import click

from lorastack.adapters.constants import FAMILIES
from lorastack.registry import Registry, parse_name_tag

from .adapters import _size
from .grammar import AliasedOption, echo_json, force_option, format_option, json_option, output_option
from .text import printable


def _registry() -> Registry:
    return Registry()


def _finite(value: float, flag: str) -> float:
    if value != value:  # FloatRange lets NaN through (every comparison with it is false)
        raise click.BadParameter(f"{value} is not a number of seconds", param_hint=flag)
    return value


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


@click.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--name", "name_tag", required=True, metavar="NAME[:TAG]", help="Adapter name (user/name allowed).")
@click.option("--trigger", default=None, help="Trigger words, comma-separated (default: from the file).")
@click.option("--base-model", default=None, help="Base model id (default: from the file).")
@click.option("--description", default=None)
@click.option("--allow-pickle", is_flag=True, help="Import a pickle file (stored converted to safetensors).")
@json_option("the new version")
def import_cmd(file, name_tag, trigger, base_model, description, allow_pickle, as_json):
    """Import an adapter FILE as a new version of NAME (tagged TAG and latest)."""
    from lorastack.adapters.metadata import split_words

    name, tag = parse_name_tag(name_tag)
    result = _registry().import_file(
        file,
        name,
        tag,
        trigger_words=split_words(trigger) if trigger is not None else None,
        base_model=base_model,
        description=description,
        allow_pickle=allow_pickle,
    )
    version = result.version
    sidecars = _sidecars(file, version.ref)
    if as_json:
        echo_json({**version.as_dict(), "created": result.created, "sidecars": sidecars})
        return
    verb = "imported" if result.created else "already stored as"
    click.echo(f"{verb} {version.ref} (tags: {', '.join(version.tags) or 'none'})")
    for problem in sidecars["problems"]:
        click.echo(f"skipped {printable(problem['path'])}: {printable(problem['reason'])}", err=True)


def _sidecars(file: Path, ref: str) -> dict:
    """The metadata of the files beside ``file`` (A1111, Civitai Helper, ComfyUI-Lora-Manager, previews) recorded
    for ``ref``; problems are reported, never fatal."""
    from lorastack.registry.sidecars import apply_sidecars, read_sidecars

    return apply_sidecars(_registry(), ref, read_sidecars(file))


@click.command("list")
@click.option("--family", type=click.Choice([*FAMILIES, "unknown"]), default=None)
@click.option("--search", default=None,
              help="Match names, trigger words, descriptions, base models and every metadata value.")  # fmt: skip
@click.option("--lineage", default=None, help="Only this base-model lineage (Pony, Illustrious, FLUX.1-dev, …).")
@click.option("--tag", default=None, help="Only versions with this tag (a registry tag or a metadata keyword).")
@click.option("-a", "--all-versions", is_flag=True, help="One row per version instead of per adapter.")
@click.option("--missing", is_flag=True, help="Only versions whose scanned file a rescan found gone.")
@click.option(
    "--sort",
    default="name",
    show_default=True,
    metavar="name|date|use|score:METRIC",
    help="Order: by name, newest first, most used first, or best stored score first (score:clip_t, "
    "score:toy.fidelity).",
)
@json_option("the rows")
def list_cmd(family, search, lineage, tag, all_versions, missing, sort, as_json):
    """List the adapters in the registry (their latest versions)."""
    for flag, value in (("--lineage", lineage), ("--tag", tag)):
        if value is not None and (not value.strip() or len(value) > 1000):
            raise click.BadParameter(f"{value[:40]!r} must be 1–1000 characters", param_hint=flag)
    rows = _registry().list(family=family, search=search, all_versions=all_versions, lineage=lineage, tag=tag,
                            missing=missing, sort=sort)  # fmt: skip
    if as_json:
        echo_json(rows)
        return
    if not rows:
        filtered = family or search or lineage or tag or missing
        click.echo("no adapters" + (" match" if filtered else " in the registry yet (lorastack import)"))
        return
    header = ("NAME", "VERSION", "TAGS", "FAMILY", "KIND", "RANK", "SIZE", "CREATED")
    table = [
        (r["name"], f"@{r['version']}" + ("" if all_versions else f"/{r['versions']}")
         + (" missing" if r.get("missing") else ""), ",".join(r["tags"]),
         r["family"] or "", r["kind"] or "", str(r["rank"] or ""), _size(r["size"]), _when(r["created_at"]))
        for r in rows
    ]  # fmt: skip
    table = [tuple(printable(cell) for cell in row) for row in table]
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        click.echo("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())


@click.command("show")
@click.argument("ref")
@json_option("the version")
def show_cmd(ref, as_json):
    """Show one version: REF is NAME, NAME:TAG or NAME@N."""
    from lorastack.registry.metadata import get_metadata
    from lorastack.registry.previews import list_previews

    registry = _registry()
    version = registry.resolve(ref)
    from lorastack.registry.scores import get_scores, headline

    meta, previews = get_metadata(registry, version.ref), list_previews(registry, version.ref)
    scores = get_scores(registry, version.ref)
    if as_json:
        echo_json({**version.as_dict(), "meta": {k: v.as_dict() for k, v in meta.items()},
                   "previews": [p.as_dict() for p in previews],
                   "scores": scores.as_dict() if scores else None})  # fmt: skip
        return
    lines = [
        ("ref", version.ref),
        ("tags", ", ".join(version.tags)),
        ("created", _when(version.created_at)),
        ("format", version.format),
        ("family", version.family),
        ("kind", version.kind),
        ("rank / alpha", f"{version.rank} / {version.alpha:g}" if version.alpha is not None else version.rank),
        ("trigger words", ", ".join(version.trigger_words)),
        ("base model", version.base_model),
        ("description", version.description),
    ]
    for f in version.files:
        lines.append(("file", f"{f.location_path or f.path}  {_size(f.size)}  sha256 {f.sha256}"))
        if f.missing:
            lines.append(("", f"MISSING since {_when(f.missing_since)}: not found by the last scan"))
        if f.tensor_sha256:
            lines.append(("", f"tensor sha256 {f.tensor_sha256}"))
    for key, value in sorted(version.provenance.items()):
        lines.append((f"source {key}", value))
    for name, item in meta.items():
        value = item.value
        if name == "trigger_groups":
            value = " | ".join(", ".join(group) for group in value)
        elif isinstance(value, list):
            value = ", ".join(value)
        lines.append((name.replace("_", " "), f"{value}  [{item.source}]"))
    for p in previews:
        lines.append(("preview", f"{p.path}  {p.width}×{p.height}  [{p.source}]" + (f"  {p.url}" if p.url else "")))
    if scores is not None:
        weight = "none" if scores.recommended_weight is None else f"{scores.recommended_weight:g}"
        lines.append(("scores", f"[{scores.source}, {_when(scores.updated_at)}] recommended weight {weight}"))
        lines += [("", f"{key} {value:.4f}") for key, value in sorted(headline(scores).items())]
    for label, value in lines:
        if value not in (None, ""):
            click.echo(f"{label:<16}{printable(value)}")


@click.command("tag")
@click.argument("ref")
@click.argument("new_tag")
@click.option("--follow", is_flag=True, help="With tag 'latest': let latest follow new imports again.")
@json_option()
def tag_cmd(ref, new_tag, follow, as_json):
    """Point NEW_TAG at the version REF names (moving the tag if it exists)."""
    registry = _registry()
    if follow:
        if new_tag != "latest":
            raise click.UsageError("--follow applies only to the tag 'latest'")
        version = registry.follow_latest(ref)
    else:
        version = registry.tag(ref, new_tag)
    if as_json:
        echo_json({"name": version.name, "tag": new_tag, "ref": version.ref})
        return
    click.echo(f"{version.name}:{new_tag} -> {version.ref}")


@click.command("rm")
@click.argument("ref")
@click.option(
    "--all-versions",
    "all_versions",
    cls=AliasedOption,
    aliases=("--all",),
    is_flag=True,
    help="Remove the whole adapter (REF is NAME): every version and tag.",
)
@click.option(
    "--with-tags",
    cls=AliasedOption,
    aliases=("--force",),
    is_flag=True,
    help="Remove a version even though tags point at it (they go too).",
)
@json_option("what was removed")
def rm_cmd(ref, all_versions, with_tags, as_json):
    """Remove a tag (NAME:TAG), a version (NAME@N), or a whole adapter (NAME --all-versions)."""
    from lorastack.registry.names import parse_ref
    from lorastack.registry.stacks import dangling

    registry = _registry()
    removed = registry.remove(ref, all_versions=all_versions, force=with_tags)
    # saved stacks that used what was removed now name a version that is gone: say so (they are kept)
    stacks = dangling(registry, parse_ref(ref).name)
    if as_json:
        echo_json({"freed": 0, **removed, "stacks_affected": stacks})
        return
    what = removed.get("adapter") or removed.get("version") or removed.get("tag")
    click.echo(f"removed {what}" + (f", freed {_size(removed['freed'])}" if removed.get("freed") else ""))
    for entry in stacks:
        click.echo(
            f"note: stack {printable(entry['stack'])} uses {printable(entry['ref'])}, which is no longer in the "
            f"registry; lorastack stack save {printable(entry['stack'])} --force … updates it",
            err=True,
        )


@click.command("export")
@click.argument("ref")
@output_option("file", required=True)
@format_option(default_help="Default: as stored.")
@force_option()
@json_option()
def export_cmd(ref, output, fmt, force, as_json):
    """Write a version's adapter file to -o, converted to --format if given."""
    registry = _registry()
    path = registry.export(ref, output, format=fmt, overwrite=force)
    if as_json:
        version = registry.resolve(ref)
        echo_json({"ref": version.ref, "output": str(path), "format": fmt or version.format})
        return
    click.echo(f"wrote {printable(path)}")


@click.command("verify")
@click.argument("ref", required=False)
@json_option("the report")
def verify_cmd(ref, as_json):
    """Re-hash stored files (all, or one version's); report missing, corrupt and extra blobs. Exit 1 unless clean."""
    report = _registry().verify(ref)
    if as_json:
        echo_json({**report.__dict__, "clean": report.clean})
    else:
        click.echo(f"checked {report.checked} blob(s)")
        for problem in report.index:
            click.echo(f"index   {printable(problem)}")
        for kind in ("missing", "corrupt", "extra", "temp"):
            for item in getattr(report, kind):
                click.echo(f"{kind:<8}{printable(item)}")
        if report.clean:
            leftovers = " (extra/temp files are leftovers of interrupted work: lorastack gc sweeps them)"
            click.echo("clean" + (leftovers if report.reclaimable else ""))
        else:
            click.echo("problems found: missing or corrupt files, or a damaged index")
    if not report.clean:
        raise SystemExit(1)


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="Only report what would be deleted.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0, max=10 * 365 * 86400),
    default=3600,
    show_default=True,
    callback=lambda ctx, param, value: _finite(value, "--grace"),
    help="Seconds to spare.",
)
@json_option("the report")
def gc_cmd(dry_run, grace, as_json):
    """Delete stored files no version uses and leftover temporary files (older than --grace)."""
    report = _registry().gc(dry_run=dry_run, grace=grace)
    if as_json:
        echo_json(report.__dict__)
        return
    verb = "would free" if dry_run else "freed"
    click.echo(f"{verb} {_size(report.freed)}: {len(report.blobs)} blob(s), {len(report.temp)} temporary file(s)")


def register(group: click.Group) -> None:
    for command in (import_cmd, list_cmd, show_cmd, tag_cmd, rm_cmd, export_cmd, verify_cmd, gc_cmd):
        group.add_command(command)
