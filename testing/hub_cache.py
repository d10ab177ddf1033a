"""Put a model folder into a huggingface_hub cache, as if it had been downloaded from the Hub."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def seed_hf_cache(cache_dir: str | Path, repo_id: str, folder: str | Path, revision: str | None = None) -> str:
    """Copy ``folder`` into ``cache_dir`` under ``repo_id`` (blobs, a snapshot, ``refs/main``); returns the commit."""
    folder, cache_dir = Path(folder), Path(cache_dir)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if revision is None:
        h = hashlib.sha1()
        for p in files:
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
        revision = h.hexdigest()
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    for p in files:
        data = p.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        target = repo / "snapshots" / revision / p.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(blob, target)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return revision
