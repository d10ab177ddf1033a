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
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cards import DIFFUSERS_FILE, model_card
from .errors import ConflictError, IntegrityError, RegistryError
from .names import LATEST, parse_ref
from .records import ImportResult, Version
from .store import Registry

MANIFEST = "lorastack.json"
VERSION_TAG = re.compile(r"^v(\d+)$")


class HubError(RegistryError):
    """Talking to the Hub failed; the message says what to do (log in, check the name, pass --file, …)."""


class HubConflictError(HubError, ConflictError):
    """The Hub branch moved since lorastack last saw it: pushing would overwrite someone's work."""


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


def _endpoint(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def check_repo_id(repo_id: str) -> str:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise HubError(f"{repo_id!r} is not a Hub repo id: write OWNER/NAME")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HubError(
            f"{repo_id!r} is not a valid Hub repo id: OWNER/NAME, letters, digits, '-', '_' and '.', at most 96 "
            "characters"
        ) from None
    return repo_id


def _translate(e: Exception, repo_id: str, endpoint: str, what: str) -> HubError:
    """A huggingface_hub/httpx error → a one-line HubError that says what to do (and never holds the token)."""
    from huggingface_hub.errors import HfHubHTTPError

    cause = e
    while cause is not None and not isinstance(cause, HfHubHTTPError):  # uploads wrap HTTP errors in RuntimeError
        cause = cause.__cause__
    return _translate_one(cause or e, repo_id, endpoint, what)


def _translate_one(e: Exception, repo_id: str, endpoint: str, what: str) -> HubError:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, RevisionNotFoundError):
        return HubError(f"{repo_id} has no revision {what!r} on the Hub; check the branch, tag or commit")
    if isinstance(e, RemoteEntryNotFoundError):
        return HubError(f"{repo_id} has no file {what!r}; pass --file with one of its weight files")
    if isinstance(e, GatedRepoError):
        return HubError(f"{repo_id} is gated: accept its conditions on the Hub, then log in (hf auth login)")
    if isinstance(e, RepositoryNotFoundError):
        return HubError(
            f"{repo_id} was not found on the Hub; check the name, or log in (hf auth login / HF_TOKEN) "
            "if it is private"
        )
    if isinstance(e, LocalEntryNotFoundError | OfflineModeIsEnabled):
        return HubError(
            f"{repo_id}@{what} is not in the local Hugging Face cache and the Hub is offline (HF_HUB_OFFLINE)"
        )
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        status = e.response.status_code
        if status == 401:
            return HubError(
                f"the Hub refused the request for {repo_id}: not logged in; run `hf auth login` or set HF_TOKEN"
            )
        if status == 403:
            return HubError(f"your Hub token may not write to {repo_id}; log in with a token that has write access")
        if status == 412:
            return HubConflictError(
                f"{repo_id}: the Hub branch moved since lorastack last synced it (someone else pushed); pull the new "
                "commits first, then push again"
            )
        return HubError(f"the Hub answered {status} for {repo_id}; try again later")
    return HubError(f"cannot reach the Hub at {endpoint} ({type(e).__name__}); check the network, then try again")


def _api(endpoint: str, token: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=token)


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
    """Push one version (``ref``) or every version of its adapter to ``repo_id``: one commit and one tag each."""
    from huggingface_hub import CommitOperationAdd

    check_repo_id(repo_id)
    endpoint = _endpoint(endpoint)
    target = registry.resolve(ref)
    versions = registry.versions(target.name) if all_versions else [target]
    staged = [(v, registry.adapter_path(v.ref)[1]) for v in versions]  # refuses corrupt blobs before any upload
    api = _api(endpoint, token)
    try:
        url = str(api.create_repo(repo_id, private=private, exist_ok=True))
        # the Hub commit this registry last saw for the adapter: a branch that moved since is someone else's work
        parent = _last_synced_commit(registry.versions(target.name), repo_id) or _branch_head(api, repo_id)
    except Exception as e:
        raise _translate(e, repo_id, endpoint, "main") from None
    result = PushResult(repo_id, url)
    with tempfile.TemporaryDirectory() as tmp:
        for version, blob in staged:
            files = _files_for(version, blob, Path(tmp), repo_id, kohya, license)
            tag = f"v{version.number}"
            try:
                commit = _already_pushed(api, repo_id, tag, files)
                if commit is None:
                    operations = [CommitOperationAdd(path, source) for path, source in files.items()]
                    info = api.create_commit(
                        repo_id,
                        operations,
                        commit_message=message or f"lorastack: {version.ref}",
                        parent_commit=parent,
                    )
                    commit = parent = info.oid
                    _move_tag(api, repo_id, tag, commit)
            except Exception as e:
                raise _translate(e, repo_id, endpoint, "main") from None
            hub = {"repo": repo_id, "commit": commit, "tag": tag, "synced_at": time.time()}
            registry.record_provenance(version.ref, {"hub": hub})
            result.pushed.append((version.ref, commit, tag))
        result.tags = _mirror_local_tags(api, registry, target.name, repo_id, result, endpoint)
    return result


def _already_pushed(api, repo_id: str, tag: str, files: dict) -> str | None:
    """The commit of Hub tag ``tag`` if it holds exactly ``files`` (so this version needs no new commit)."""
    from huggingface_hub.utils.sha import git_hash

    target = next((t.target_commit for t in api.list_repo_refs(repo_id).tags if t.name == tag), None)
    if target is None:
        return None
    remote = {entry.path: entry for entry in api.get_paths_info(repo_id, list(files), revision=target)}
    for path, source in files.items():
        entry = remote.get(path)
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        if entry is None or (
            hashlib.sha256(data).hexdigest() != entry.lfs.sha256 if entry.lfs else git_hash(data) != entry.blob_id
        ):
            return None
    return target


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


def _mirror_local_tags(api, registry, name, repo_id, result: PushResult, endpoint: str) -> list[str]:
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
                raise _translate(e, repo_id, endpoint, tag) from None
            mirrored.append(tag)
    return mirrored


def _files_for(version: Version, blob: Path, tmp: Path, repo_id: str, kohya: bool, license: str | None) -> dict:
    """Repo path → bytes or file for one version's commit."""
    from lorastack.adapters import UnsupportedAdapterError, read_adapter, write_adapter

    basename = version.name.split("/")[-1]
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
    files["README.md"] = model_card(version, repo_id, list(files), license).encode()
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
    """Import ``OWNER/NAME[@REVISION]`` (or, with ``all_versions``, every ``vN`` tag in order) into the registry."""
    repo_id, _, revision = spec.partition("@")
    check_repo_id(repo_id)
    local = name or repo_id
    parse_ref(local)  # the local name must be valid before anything is downloaded
    endpoint = _endpoint(endpoint)
    api = _api(endpoint, token)
    result = PullResult(repo_id)
    if all_versions:
        try:
            refs = api.list_repo_refs(repo_id)
        except Exception as e:
            raise _translate(e, repo_id, endpoint, "tags") from None
        numbered = sorted((int(VERSION_TAG.match(t.name).group(1)), t) for t in refs.tags if VERSION_TAG.match(t.name))
        if not numbered:
            raise HubError(f"{repo_id} has no version tags (v1, v2, …); pull a revision instead")
        for _, tag in numbered:
            result.versions.append(_pull_one(registry, api, repo_id, tag.name, local, file, token, endpoint))
        by_commit = {commit: imported.version for imported, commit in result.versions}
        for tag in refs.tags:  # other Hub tags become local tags on the same versions
            version = by_commit.get(tag.target_commit)
            if version is not None and not VERSION_TAG.match(tag.name) and tag.name.lower() != LATEST:
                registry.tag(version.ref, tag.name)
        return result
    result.versions.append(_pull_one(registry, api, repo_id, revision or "main", local, file, token, endpoint))
    return result


def _pull_one(registry, api, repo_id, revision, local, file, token, endpoint) -> tuple[ImportResult, str]:
    from huggingface_hub import hf_hub_download

    offline = _offline()
    try:
        if offline:
            commit, listing = _cached_listing(repo_id, revision)
        else:
            info = api.model_info(repo_id, revision=revision, files_metadata=True)
            commit = info.sha
            listing = {s.rfilename: (s.lfs.sha256 if s.lfs else None) for s in info.siblings or []}

        def download(path: str) -> Path:
            # by the revision's name, so the cache learns which commit it names and later offline pulls of the
            # same name work; a tag moved in between gives other bytes, which the sha256 check below refuses
            return Path(
                hf_hub_download(
                    repo_id, path, revision=revision, endpoint=endpoint, token=token, local_files_only=offline
                )
            )

        manifest = json.loads(download(MANIFEST).read_text()) if MANIFEST in listing else {}
        chosen = _choose_file(repo_id, listing, file, manifest)
        path = download(chosen)
        card = _card_data(download("README.md")) if "README.md" in listing else {}
    except HubError:
        raise
    except Exception as e:
        from huggingface_hub.errors import RemoteEntryNotFoundError

        raise _translate(e, repo_id, endpoint, file if isinstance(e, RemoteEntryNotFoundError) else revision) from None
    expected = listing.get(chosen) or (manifest.get("adapter", {}).get("sha256") if manifest else None)
    if expected and _sha256(path) != expected:
        raise IntegrityError(f"{repo_id}@{revision}: {chosen} does not match its sha256 on the Hub; pull it again")
    manifest_matches = manifest.get("adapter", {}).get("path") == chosen
    details = {
        "trigger_words": manifest.get("trigger_words") if manifest_matches else card.get("trigger_words"),
        "base_model": manifest.get("base_model") if manifest_matches else card.get("base_model"),
        "description": manifest.get("description") if manifest_matches else None,
    }
    provenance = {"hub": {"repo": repo_id, "commit": commit, "revision": revision, "file": chosen}}
    synced = {"hub": {**provenance["hub"], "synced_at": time.time()}}
    imported = registry.import_file(path, local, provenance=provenance, **details)
    registry.record_provenance(imported.version.ref, synced)  # also when the bytes were already here
    if manifest_matches:
        for tag in manifest.get("tags", []):
            if not VERSION_TAG.match(tag):
                registry.tag(imported.version.ref, tag)
    return imported, commit


def _cached_listing(repo_id: str, revision: str) -> tuple[str, dict[str, str | None]]:
    """Offline: the commit a revision resolved to last time and the files cached for it."""
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    listing = {}
    for p in folder.rglob("*"):
        if p.is_file() or p.is_symlink():
            blob = p.resolve().name  # huggingface_hub names LFS blobs by their sha256
            listing[p.relative_to(folder).as_posix()] = blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None
    return folder.name, listing


def _choose_file(repo_id: str, listing: dict, file: str | None, manifest: dict) -> str:
    if file is not None:
        if file not in listing:
            weights = sorted(f for f in listing if f.endswith(".safetensors"))
            raise HubError(f"{repo_id} has no file {file!r}; its weight files: {', '.join(weights) or 'none'}")
        return file
    if manifest.get("adapter", {}).get("path") in listing:
        return manifest["adapter"]["path"]
    weights = sorted(f for f in listing if f.endswith(".safetensors"))
    if DIFFUSERS_FILE in weights:
        return DIFFUSERS_FILE
    if len(weights) == 1:
        return weights[0]
    if not weights:
        raise HubError(f"{repo_id} has no adapter file (.safetensors) at this revision; pass --file if it has one")
    raise HubError(f"{repo_id} has several weight files ({', '.join(weights)}); pass --file with the one to pull")


def _card_data(path: Path) -> dict[str, Any]:
    from huggingface_hub import ModelCard

    try:
        data = ModelCard(path.read_text(encoding="utf-8")).data.to_dict()
    except Exception:  # a card the Hub accepted but lorastack cannot parse: no details from it
        return {}
    prompt = data.get("instance_prompt")
    return {
        "trigger_words": [w.strip() for w in prompt.split(",") if w.strip()] if isinstance(prompt, str) else None,
        "base_model": data.get("base_model") if isinstance(data.get("base_model"), str) else None,
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
