"""Walking the folders ``lorastack scan`` is given: every file once, every problem reported per file, never fatal.

Symbolic links are followed (collections often link folders in from other disks), so a folder is entered once by
its (device, inode): a link back to an ancestor (a loop) or a second link to the same folder is reported, not
followed again. A broken link, a folder that cannot be listed and a file that cannot be stat'ed are each reported
with the reason and counted; the walk goes on.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: Files read as adapters (the registry stores safetensors; pickles are refused with the reader's reason).
WEIGHTS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
#: Sidecars A1111, Civitai Helper and ComfyUI-Lora-Manager write beside an adapter (registry/sidecars.py reads them),
#: and previews: counted as an adapter's sidecars, not listed as skipped files.
SIDECAR_SUFFIXES = (".json", ".civitai.info", ".metadata.json", ".txt", ".yaml", ".toml")
PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".mp4", ".webm")
#: Folder entries listed at most, per folder (a folder of millions of files is read in one listing otherwise).
MAX_ENTRIES = 1_000_000


@dataclass(frozen=True)
class Found:
    """One regular file under a scanned root: its path, its stat (links followed) and the root it was found in."""

    path: Path
    stat: os.stat_result
    root: Path


def walk(root: Path, problem) -> Iterator[Found]:
    """Every regular file under ``root`` (links followed, loops cut); ``problem(path, reason)`` for the rest."""
    seen: set[tuple[int, int]] = set()
    try:
        top = os.stat(root)
    except OSError as e:
        problem(root, _reason(e))
        return
    if not stat.S_ISDIR(top.st_mode):
        if stat.S_ISREG(top.st_mode):  # a file given on the command line: scanned on its own
            yield Found(root, top, root.parent)
        else:
            problem(root, "is not a folder or a file")
        return
    stack = [root]
    seen.add((top.st_dev, top.st_ino))
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted((e for _, e in zip(range(MAX_ENTRIES), listing)), key=lambda e: e.name)
        except OSError as e:
            problem(folder, _reason(e))
            continue
        subfolders = []
        for entry in entries:
            path = Path(entry.path)
            try:
                st = entry.stat()  # follows links
            except FileNotFoundError:
                problem(path, "is a broken symbolic link" if entry.is_symlink() else "vanished while it was listed")
                continue
            except OSError as e:
                problem(path, _reason(e))
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    problem(path, "is a symbolic link to a folder already scanned (a loop); not followed again")
                    continue
                seen.add(key)
                subfolders.append(path)
            elif stat.S_ISREG(st.st_mode):
                yield Found(path, st, root)
            else:
                problem(path, "is not a regular file (a FIFO, socket or device); not read")
        stack.extend(reversed(subfolders))  # depth first, in name order


def kind(path: Path) -> str:
    """``"weights"``, ``"pickle"``, ``"sidecar"`` (metadata or preview beside an adapter) or ``"other"``."""
    name = path.name.lower()
    if name.endswith(WEIGHTS_SUFFIXES):
        return "weights"
    if name.endswith(PICKLE_SUFFIXES):
        return "pickle"
    if name.endswith(SIDECAR_SUFFIXES) or name.endswith(PREVIEW_SUFFIXES):
        return "sidecar"
    return "other"


def _reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    return f"cannot be read ({e.strerror or e})"
