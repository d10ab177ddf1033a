"""Sync with the Hugging Face Hub: a local version is a Hub tag (``v1``, ``v2``, …), a push is one commit.

Everything goes through ``huggingface_hub``: its token lookup (never stored here), its cache, resume and offline
mode. A pushed repo holds

* ``pytorch_lora_weights.safetensors`` — the adapter in diffusers format (the stored bytes when the version is a
  diffusers file, converted otherwise);
* ``<name>.safetensors`` — the stored kohya bytes, or with ``kohya=True`` a kohya conversion for A1111/ComfyUI;
* ``README.md`` — the model card; ``lorastack.json`` — which file holds the exact stored bytes, the version number,
  local tags and details, so a pull gives back the same tensor hash, metadata and version numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorastack.adapters.errors import AdapterError
from lorastack.faults import crash_point

from .cards import DIFFUSERS_FILE, LICENSE_ID, model_card
from .errors import InvalidNameError, InvalidValueError
from .hub_client import (
    DEFAULT_TIMEOUT,
    TIMEOUT_ENV,
    HubConflictError,
    HubError,
    _api,
    _endpoint,
    _offline,
    check_repo_id,
    hub_timeout,
    raise_hub_error,
    redact,
)
from .hub_revisions import VERSION_TAG, _cached_listing, _choose_file, _revision_number, _verified
from .manifest import MANIFEST, _card_data, _read_manifest, _small_text, _validate_manifest
from .names import LATEST, validate_name, validate_tag
from .records import ImportResult, Version
from .store import Registry

__all__ = [
    "DEFAULT_TIMEOUT",
    "MANIFEST",
    "TIMEOUT_ENV",
    "HubConflictError",
    "HubError",
    "PullResult",
    "PushResult",
    "check_repo_id",
    "hub_timeout",
    "pull",
    "push",
    "redact",
]

logger = logging.getLogger(__name__)


@dataclass
class PushResult:
    repo_id: str
    url: str
    pushed: list[tuple[str, str, str]] = field(default_factory=list)  # (local ref, hub commit, hub tag)
    tags: list[str] = field(default_factory=list)


@dataclass
class PullResult:
    repo_id: str
    versions: list[tuple[ImportResult, str]] = field(default_factory=list)  # (import result, hub commit)


# --- push ------------------------------------------------------------------------------------------------------


def push(
    registry: Registry,
    ref: str,
    repo_id: str,
    *,
    private: bool = False,
    all_versions: bool = False,
    message: str | None = None,
    kohya: bool = False,
    license: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Push one version (``ref``) or every version of its adapter to ``repo_id``: one commit and one tag each.

    Afterwards the branch holds the last version pushed (the newest, with ``all_versions``), even when that
    version's tag already held its files and earlier versions needed new commits.
    """
    from huggingface_hub import CommitOperationAdd

    check_repo_id(repo_id)
    if license is not None and not LICENSE_ID.fullmatch(license):
        raise HubError(
            f"--license {license[:60]!r} is not a Hub license id: lowercase letters, digits, '.', '+' and '-' "
            "(apache-2.0, mit, openrail++, creativeml-openrail-m, other, …)"
        )
    endpoint = _endpoint(endpoint)
    target = registry.resolve(ref)
    versions = registry.versions(target.name) if all_versions else [target]
    staged = [(v, registry.adapter_path(v.ref)[1]) for v in versions]  # refuses corrupt blobs before any upload
    api = _api(endpoint, token)
    try:
        url = str(api.create_repo(repo_id, private=private, exist_ok=True))
        parent = _parent_commit(api, registry, target.name, repo_id, token)
    except Exception as e:
        raise_hub_error(e, repo_id, endpoint, "main", token)
    result = PushResult(repo_id, url)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (version, blob) in enumerate(staged):
            files = _files_for(version, blob, Path(tmp), repo_id, kohya, license, _scores(registry, version.ref))
            tag = f"v{version.number}"
            last = i == len(staged) - 1
            try:
                commit = _tag_holding(api, repo_id, tag, files)
                # the branch must end on the last version: commit it again when the branch holds something else
                if commit is None or (last and commit != parent and not _holds(api, repo_id, parent, files)):
                    if _holds(api, repo_id, parent, files):  # the head has it already (a push killed before its tag)
                        commit = parent
                    else:
                        operations = [CommitOperationAdd(path, source) for path, source in files.items()]
                        info = api.create_commit(
                            repo_id,
                            operations,
                            commit_message=message or f"lorastack: {version.ref}",
                            parent_commit=parent,
                        )
                        commit = parent = info.oid
                        crash_point("hub.push.committed")
                    _move_tag(api, repo_id, tag, commit)
            except Exception as e:
                raise_hub_error(e, repo_id, endpoint, "main", token)
            hub = {"repo": repo_id, "commit": commit, "tag": tag, "synced_at": time.time()}
            registry.record_provenance(version.ref, {"hub": hub})
            result.pushed.append((version.ref, commit, tag))
        result.tags = _mirror_local_tags(api, registry, target.name, repo_id, result, endpoint, token)
    return result


def _tag_holding(api, repo_id: str, tag: str, files: dict) -> str | None:
    """The commit of Hub tag ``tag`` if it holds exactly ``files`` (so this version needs no new commit)."""
    target = next((t.target_commit for t in api.list_repo_refs(repo_id).tags if t.name == tag), None)
    return target if target is not None and _holds(api, repo_id, target, files) else None


def _holds(api, repo_id: str, revision: str | None, files: dict) -> bool:
    """Whether ``revision`` has every one of ``files`` with the same bytes."""
    from huggingface_hub.utils.sha import git_hash

    if revision is None:
        return False
    remote = {entry.path: entry for entry in api.get_paths_info(repo_id, list(files), revision=revision)}
    for path, source in files.items():
        entry = remote.get(path)
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        lfs = getattr(entry, "lfs", None)
        if entry is None or (
            hashlib.sha256(data).hexdigest() != lfs.sha256 if lfs else git_hash(data) != getattr(entry, "blob_id", "")
        ):
            return False
    return True


def _parent_commit(api, registry: Registry, name: str, repo_id: str, token: str | None) -> str | None:
    """The commit a push builds on: the branch head when lorastack made it (recorded, or recognisably its own: the
    head's manifest names a local version never recorded as synced with this repo, which only a push killed after
    its commit leaves); otherwise the commit this registry last synced, so that a branch someone else moved gives a
    conflict instead of being overwritten."""
    versions = registry.versions(name)
    last = _last_synced_commit(versions, repo_id)
    head = _branch_head(api, repo_id)
    if last is None or head is None or head == last:
        return head
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        manifest = _validate_manifest(
            _small_text(Path(hf_hub_download(repo_id, MANIFEST, revision=head, token=token)), repo_id, MANIFEST),
            repo_id,
        )
    except (HfHubHTTPError, HubError):  # no manifest, or not ours: someone else's commit (a bug still surfaces)
        return last
    # a version this registry holds but never recorded as synced with this repo: only a push of ours puts it there
    unrecorded = {
        (v.number, v.adapter_file.sha256) for v in versions if (v.provenance.get("hub") or {}).get("repo") != repo_id
    }
    return head if (manifest.get("version"), manifest["adapter"]["sha256"]) in unrecorded else last


def _last_synced_commit(versions: list[Version], repo_id: str) -> str | None:
    synced = [v.provenance.get("hub") or {} for v in versions]
    synced = [h for h in synced if h.get("repo") == repo_id and h.get("commit")]
    return max(synced, key=lambda h: h.get("synced_at", 0))["commit"] if synced else None


def _branch_head(api, repo_id: str, branch: str = "main") -> str | None:
    refs = api.list_repo_refs(repo_id)
    return next((b.target_commit for b in refs.branches if b.name == branch), None)


def _move_tag(api, repo_id: str, tag: str, commit: str) -> None:
    current = {t.name: t.target_commit for t in api.list_repo_refs(repo_id).tags}
    if current.get(tag) == commit:
        return
    if tag in current:  # Hub tags do not move: delete, then create
        api.delete_tag(repo_id, tag=tag)
    api.create_tag(repo_id, tag=tag, revision=commit)


def _mirror_local_tags(api, registry, name, repo_id, result: PushResult, endpoint: str, token) -> list[str]:
    """Point Hub tags named like the local tags (not ``latest`` and not ``vN``) at the pushed versions."""
    commits = {ref: commit for ref, commit, _ in result.pushed}
    mirrored = []
    for version in registry.versions(name):
        commit = commits.get(version.ref) or (version.provenance.get("hub") or {}).get("commit")
        if commit is None or (version.provenance.get("hub") or {}).get("repo", repo_id) != repo_id:
            continue
        for tag in version.tags:
            if tag.lower() == LATEST or VERSION_TAG.match(tag):
                continue
            try:
                _move_tag(api, repo_id, tag, commit)
            except Exception as e:
                raise_hub_error(e, repo_id, endpoint, tag, token)
            mirrored.append(tag)
    return mirrored


def _scores(registry, ref: str):
    """The version's stored evaluation scores (``None``: never evaluated), for its model card."""
    from .scores import get_scores

    return get_scores(registry, ref)


def _files_for(version: Version, blob: Path, tmp: Path, repo_id: str, kohya: bool, license: str | None,
               scores=None) -> dict:  # fmt: skip
    """Repo path → bytes or file for one version's commit."""
    from lorastack.adapters import UnsupportedAdapterError, read_adapter, write_adapter

    basename = version.name.split("/")[-1]
    if f"{basename}.safetensors".lower() in (DIFFUSERS_FILE, MANIFEST.lower()):
        basename += "-kohya"  # the kohya file must not take the diffusers file's name
    files: dict[str, Any] = {}
    if version.format == "diffusers":
        original = DIFFUSERS_FILE
        files[DIFFUSERS_FILE] = blob
        if kohya:
            out = write_adapter(read_adapter(blob), tmp / f"{basename}-kohya.safetensors", "kohya")
            files[f"{basename}.safetensors"] = out
    else:
        original = f"{basename}.safetensors"
        files[original] = blob
        with contextlib.suppress(UnsupportedAdapterError):  # LoHa/LoKr have no diffusers form
            files[DIFFUSERS_FILE] = write_adapter(read_adapter(blob), tmp / f"{basename}-d.safetensors", "diffusers")
    record = version.adapter_file
    manifest = {
        "lorastack": 1,
        "name": version.name,
        "version": version.number,
        "tags": sorted(t for t in version.tags if t.lower() != LATEST),
        "adapter": {"path": original, "sha256": record.sha256, "tensor_sha256": record.tensor_sha256},
        "format": version.format,
        "family": version.family,
        "trigger_words": version.trigger_words,
        "base_model": version.base_model,
        "description": version.description,
    }
    files[MANIFEST] = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    files["README.md"] = model_card(version, repo_id, list(files), license, scores).encode()
    return files


# --- pull ------------------------------------------------------------------------------------------------------


def pull(
    registry: Registry,
    spec: str,
    *,
    name: str | None = None,
    file: str | None = None,
    all_versions: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> PullResult:
    """Import ``OWNER/NAME[@REVISION]`` (or, with ``all_versions``, every ``vN`` tag in order) into the registry.

    Hub tag ``vN`` (or the manifest's version) becomes local version N when the local adapter never had a version
    N, so local numbers follow the Hub's whatever order revisions are pulled in. Each revision is validated
    completely (repo id, manifest, tags, sha256) before anything is imported, and imported in one transaction.
    """
    repo_id, _, revision = spec.partition("@")
    check_repo_id(repo_id)
    local = name or repo_id
    try:  # the local name must be valid before anything is downloaded
        validate_name(local)
    except InvalidNameError as e:
        hint = "" if name else f"; choose a local name with --name (the repo id {repo_id} is not one)"
        raise InvalidNameError(f"{e}{hint}") from None
    endpoint = _endpoint(endpoint)
    api = _api(endpoint, token)
    result = PullResult(repo_id)
    if all_versions:
        if _offline():
            raise HubError(
                f"pull --all-versions lists {repo_id}'s tags on the Hub, which is offline (HF_HUB_OFFLINE); pull "
                "one cached revision instead (OWNER/NAME@vN)"
            )
        try:
            refs = api.list_repo_refs(repo_id)
        except Exception as e:
            raise_hub_error(e, repo_id, endpoint, "tags", token)
        numbered = sorted(
            ((int(m.group(1)), t) for t in refs.tags if (m := VERSION_TAG.match(t.name))), key=lambda pair: pair[0]
        )
        if not numbered:
            raise HubError(f"{repo_id} has no version tags (v1, v2, …); pull a revision instead")
        others = {}  # commit → other Hub tags on it, which become local tags of the same version
        for tag in refs.tags:
            if not VERSION_TAG.match(tag.name) and tag.name.lower() != LATEST and _valid_tag(tag.name):
                others.setdefault(tag.target_commit, []).append(tag.name)
        for number, tag in numbered:
            pulled = _pull_one(registry, api, repo_id, tag.name, local, file, token, endpoint, number,
                               others.get(tag.target_commit, []))  # fmt: skip
            result.versions.append(pulled)
        return result
    revision = revision or "main"
    result.versions.append(_pull_one(registry, api, repo_id, revision, local, file, token, endpoint))
    return result


def _valid_tag(tag: str) -> bool:
    try:
        validate_tag(tag)
    except InvalidNameError:
        logger.warning("Hub tag %r is not a valid lorastack tag; it is not copied", tag[:60])
        return False
    return True


def _pull_one(
    registry, api, repo_id, revision, local, file, token, endpoint, number=None, extra_tags=()
) -> tuple[ImportResult, str]:
    from huggingface_hub import hf_hub_download

    offline = _offline()
    try:
        if offline:
            commit, listing = _cached_listing(repo_id, revision)
        else:
            info = api.model_info(repo_id, revision=revision, files_metadata=True)
            commit = info.sha
            listing = {s.rfilename: (getattr(s.lfs, "sha256", None) if s.lfs else None) for s in info.siblings or []}
    except Exception as e:
        raise_hub_error(e, repo_id, endpoint, revision, token)

    def download(path: str, force: bool = False) -> Path:
        # by the revision's name, so the cache learns which commit it names and later offline pulls of the same
        # name work; a tag moved in between gives other bytes, which the sha256 check refuses
        try:
            return Path(
                hf_hub_download(
                    repo_id,
                    path,
                    revision=revision,
                    endpoint=endpoint,
                    token=token,
                    local_files_only=offline,
                    force_download=force,
                )
            )
        except Exception as e:
            from huggingface_hub.errors import RemoteEntryNotFoundError

            raise_hub_error(e, repo_id, endpoint, path if isinstance(e, RemoteEntryNotFoundError) else revision,
                            token)  # fmt: skip

    where = f"{repo_id}@{revision}"
    manifest = _read_manifest(download(MANIFEST), where, lenient=file is not None) if MANIFEST in listing else {}
    chosen = _choose_file(repo_id, listing, file, manifest)
    expected = listing.get(chosen) or (manifest.get("adapter", {}).get("sha256") if manifest else None)
    path = _verified(download, chosen, expected, where, offline)
    card = _card_data(download("README.md"), where) if "README.md" in listing else {}
    manifest_matches = manifest.get("adapter", {}).get("path") == chosen
    details = {
        "trigger_words": manifest.get("trigger_words") if manifest_matches else card.get("trigger_words"),
        "base_model": manifest.get("base_model") if manifest_matches else card.get("base_model"),
        "description": manifest.get("description") if manifest_matches else None,
    }
    # `latest` is the local registry's own (a manifest naming it would pin an old version); vN are numbers
    tags = [
        t
        for t in (manifest.get("tags", []) if manifest_matches else [])
        if not VERSION_TAG.match(t) and t.lower() != LATEST
    ]
    tags += [t for t in extra_tags if t not in tags]
    if number is None:
        number = _revision_number(api, repo_id, revision, commit, manifest if manifest_matches else {}, offline)
    provenance = {"hub": {"repo": repo_id, "commit": commit, "revision": revision, "file": chosen}}
    sync = {"hub": {**provenance["hub"], "synced_at": time.time()}}
    crash_point("hub.pull.downloaded")
    try:
        imported = registry.import_file(
            path, local, tags=tags, number=number, provenance=provenance, sync=sync, **details
        )  # fmt: skip
    except AdapterError as e:  # name the file in the repo, not its place in the Hugging Face cache
        raise type(e)(e.problem, f"{where}:{chosen}") from None
    except InvalidValueError as e:
        raise HubError(f"{where}: {chosen}: {e}") from None
    return imported, commit
