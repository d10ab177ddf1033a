"""``lorastack scan``: bring the adapter files under folders into the registry, in place or copied."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lorastack.registry import Registry

from .grammar import echo_json, json_option
from .text import printable

#: Files and problems listed one per line before the rest are only counted (``--json`` lists them all).
SHOWN = 20


@click.command("scan")
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--copy", is_flag=True, help="Store copies in the registry (as import does) instead of in place.")
@click.option("--namespace", default=None, metavar="NS", help="Put every adapter under NS/ (default: its folder).")
@json_option("what the scan found and did")
def scan_cmd(folders, copy, namespace, as_json):
    """Bring every adapter file under FOLDERS into the registry; rerun to pick up changes.

    Files stay where they are unless --copy: the registry records each file's path, hashes and (device, inode,
    size, mtime), so a rescan reads only new and changed files, finds moved files by hash, records a file changed
    in place as a new version and marks deleted files missing (lorastack list shows them).
    """
    from lorastack.registry.scan import scan

    progress = _Progress(enabled=not as_json and _terminal())
    try:
        report = scan(Registry(), folders, copy=copy, namespace=namespace, on_read=progress.read,
                      on_total=progress.start)  # fmt: skip
    finally:
        progress.close()
    if as_json:
        echo_json(report.as_dict())
        return
    for label, rows, key in (("added", report.added, "path"), ("new version", report.updated, "path"),
                             ("missing", report.missing, "path")):  # fmt: skip
        _lines(rows, lambda r, label=label, key=key: f"{label} {r['ref']}: {printable(r[key])}")
    _lines(report.moved, lambda r: f"moved {r['ref']}: {printable(r['from'])} → {printable(r['to'])}")
    _lines(report.skipped, lambda r: f"skipped {printable(r['path'])}: {printable(r['reason'])}")
    _lines(report.errors, lambda r: f"error {printable(r['path'])}: {printable(r['error'])}")
    _lines(report.sidecar_problems, lambda r: f"sidecar {printable(r['path'])}: {printable(r['reason'])}")
    mb = report.bytes_hashed / 1e6
    rate = f", {report.hashed / report.seconds:.0f} files/s, {mb / report.seconds:.1f} MB/s" if report.hashed else ""
    click.echo(
        f"{len(report.added)} added, {len(report.updated)} new versions, {len(report.moved)} moved, "
        f"{report.unchanged} unchanged, {len(report.missing)} newly missing, {len(report.skipped)} skipped, "
        f"{len(report.errors)} errors, {report.sidecars} sidecar files; read {report.hashed} files ({mb:.1f} MB) "
        f"in {report.seconds:.1f} s{rate}"
    )


def _lines(rows: list[dict], line) -> None:
    for row in rows[:SHOWN]:
        click.echo(line(row))
    if len(rows) > SHOWN:
        click.echo(f"… and {len(rows) - SHOWN} more (--json lists them all)")


def _terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _Progress:
    """A bar on stderr (a terminal only) with files/s and MB/s while files are read."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar, self.bytes = enabled, None, 0

    def start(self, files: int, size: int) -> None:
        if not self.enabled or not files:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=files, desc="scan", unit="file", file=sys.stderr, dynamic_ncols=True)

    def read(self, size: int) -> None:
        if self.bar is None:
            return
        self.bytes += size
        self.bar.update(1)
        elapsed = self.bar.format_dict.get("elapsed") or 0
        if elapsed > 0:
            self.bar.set_postfix_str(f"{self.bytes / 1e6 / elapsed:.1f} MB/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def register(cli: click.Group) -> None:
    cli.add_command(scan_cmd)
