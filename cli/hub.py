"""``lorastack push`` and ``lorastack pull``: the registry and the Hugging Face Hub."""

from __future__ import annotations

import click

from .grammar import echo_json, json_option


def _quiet_hub() -> None:
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()


@click.command("push")
@click.argument("ref")
@click.option(
    "--repo", "repo_id", required=True, metavar="OWNER/NAME", help="Hub repo to push to (created if needed)."
)
@click.option("--private", is_flag=True, help="Create the repo private.")
@click.option("--all-versions", is_flag=True, help="Push every version of the adapter, one commit and tag each.")
@click.option("--message", default=None, help="Commit message.")
@click.option("--kohya", is_flag=True, help="Also upload a kohya-format copy (for A1111/ComfyUI).")
@click.option("--license", "license_", default=None, help="License for the model card (default: the base's).")
@json_option()
def push_cmd(ref, repo_id, private, all_versions, message, kohya, license_, as_json):
    """Push REF (a registry reference) to a Hub repo: the adapter, a model card, and a tag vN per version.

    The token comes from huggingface_hub (hf auth login, or HF_TOKEN) and is never stored by lorastack.
    """
    from lorastack.registry import Registry
    from lorastack.registry.hub import push

    _quiet_hub()
    result = push(Registry(), ref, repo_id, private=private, all_versions=all_versions, message=message,
                  kohya=kohya, license=license_)  # fmt: skip
    if as_json:
        echo_json({
            "repo_id": result.repo_id, "url": result.url, "tags": sorted(set(result.tags)),
            "pushed": [{"ref": local, "commit": commit, "tag": tag} for local, commit, tag in result.pushed],
        })  # fmt: skip
        return
    for local, commit, tag in result.pushed:
        click.echo(f"{local} -> {repo_id}:{tag} ({commit[:8]})")
    if result.tags:
        click.echo(f"tags: {', '.join(sorted(set(result.tags)))}")
    click.echo(result.url)


@click.command("pull")
@click.argument("spec", metavar="OWNER/NAME[@REVISION]")
@click.option("--name", default=None, help="Local adapter name (default: the repo id).")
@click.option("--file", "file", default=None, help="Weight file to pull when the repo has several.")
@click.option("--all-versions", is_flag=True, help="Pull every version tag (v1, v2, …) in order.")
@json_option()
def pull_cmd(spec, name, file, all_versions, as_json):
    """Pull an adapter from a Hub repo into the registry, verified, with the repo and commit as its provenance.

    Works offline (HF_HUB_OFFLINE=1) for revisions already in the Hugging Face cache.
    """
    from lorastack.registry import Registry
    from lorastack.registry.hub import pull

    _quiet_hub()
    result = pull(Registry(), spec, name=name, file=file, all_versions=all_versions)
    if as_json:
        echo_json({
            "repo_id": result.repo_id,
            "versions": [
                {"ref": imported.version.ref, "commit": commit, "created": imported.created,
                 "tags": imported.version.tags}
                for imported, commit in result.versions
            ],
        })  # fmt: skip
        return
    for imported, commit in result.versions:
        verb = "pulled" if imported.created else "already have"
        version = imported.version
        click.echo(f"{verb} {version.ref} from {result.repo_id}@{commit[:8]} (tags: {', '.join(version.tags)})")


def register(group: click.Group) -> None:
    group.add_command(push_cmd)
    group.add_command(pull_cmd)
