"""``lorastack plugins``: what is installed and what each plugin registers."""

from __future__ import annotations

import json

import click

LABELS = {"trainers": "trainers", "captioners": "captioners", "dataset_sources": "dataset sources",
          "metadata_sources": "metadata sources", "evaluators": "evaluators"}  # fmt: skip


@click.command("plugins")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Machine-readable: plugins, registered names and options, failures and warnings.",
)
def plugins_cmd(as_json):
    """List the loaded plugins, their versions and the names each registers, per hook.

    Plugins that failed to load, and hooks a plugin implements that lorastack does not have (a misspelt name), are
    listed too.
    """
    from lorastack.plugins.manager import get_manager

    described = get_manager().describe()
    if as_json:
        click.echo(json.dumps(described, indent=2, sort_keys=True))
        return
    for plugin in described["plugins"]:
        origin = "built-in" if plugin["builtin"] else (plugin["distribution"] or "registered at run time")
        click.echo(f"{plugin['name']} {plugin['version'] or ''} ({origin})".replace("  ", " "))
        for kind, names in plugin["provides"].items():
            click.echo(f"  {LABELS[kind]}: {', '.join(names)}")
        if not plugin["provides"]:
            click.echo("  (registers nothing)")
    for failure in described["failed"]:
        click.echo(f"{failure['plugin']} FAILED: {failure['error']}")
    for problem in described["warnings"]:
        click.echo(f"{problem['plugin']} WARNING: {problem['warning']}")
    for kind, table in described["registered"].items():
        if table:
            click.echo(f"\n{LABELS[kind]}:")
            for name, entry in table.items():
                click.echo(f"  {name:<12} {entry['description']}")


def register(group: click.Group) -> None:
    group.add_command(plugins_cmd)
