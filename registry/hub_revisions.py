"""What a pull reads from a Hub revision: which file to take, its version number, the bytes checked against the
Hub's sha256 (a bad cached copy evicted and fetched again), and the listing of a revision cached for offline use."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from lorastack.adapters.files import file_sha256

from .cards import DIFFUSERS_FILE
from .errors import IntegrityError
from .hub_client import HubError
from .names import MAX_VERSION

VERSION_TAG = re.compile(r"^v([1-9][0-9]{0,8})$")  # v1 … v999999999; "v01" is an ordinary tag


def _revision_number(api, repo_id, revision, commit, manifest, offline) -> int | None:
    """The version number a revision stands for: its own name (``v3``), a ``vN`` tag on its commit, or the
    manifest's version."""
    m = VERSION_TAG.match(revision)
    if m and 0 < int(m.group(1)) <= MAX_VERSION:
        return int(m.group(1))
    if not offline:
        with contextlib.suppress(Exception):  # only a hint: a failure here changes no outcome
            for tag in api.list_repo_refs(repo_id).tags:
                m = VERSION_TAG.match(tag.name)
                if m and tag.target_commit == commit and 0 < int(m.group(1)) <= MAX_VERSION:
                    return int(m.group(1))
    return manifest.get("version")


def _verified(download, chosen: str, expected: str | None, where: str, offline: bool) -> Path:
    """Download ``chosen`` and check its sha256. A mismatching copy is evicted from the Hugging Face cache (where
    it would fail every later pull the same way) and fetched once more."""
    path = download(chosen)
    if not expected or file_sha256(path) == expected:
        return path
    _evict(path)
    if not offline:
        path = download(chosen, force=True)
        if file_sha256(path) == expected:
            return path
        _evict(path)
    raise IntegrityError(
        f"{where}: {chosen} does not match its sha256 on the Hub (expected {expected[:12]}…); the bad copy was "
        "removed from the Hugging Face cache, pull it again" + (" when online" if offline else "")
    )


def _evict(path: Path) -> None:
    """Remove a cached file: the snapshot link and the blob it points at."""
    real = path.resolve()
    with contextlib.suppress(OSError):
        path.unlink()
    if real != path:
        with contextlib.suppress(OSError):
            real.unlink()


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
