"""Folders on the server's machine that requests may name (a dataset to train on, a folder to scan).

Requests never choose what the server reads by path alone: only folders under one that ``lorastack serve
--folder DIR`` named (after links are followed) are taken, so a request cannot make the server read, say, another
user's files. Uploads (a dataset zip, an adapter file) need no folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from lorastack.errors import LorastackError


class FolderNotAllowed(LorastackError):
    """A request named a folder outside the ones the server was started with."""


def allowed_roots(folders) -> list[Path]:
    return [Path(os.path.realpath(Path(f).expanduser())) for f in folders or ()]


def check_folder(roots: list[Path], text: str, what: str) -> Path:
    """``text`` as a folder under one of ``roots`` (links followed), or :class:`FolderNotAllowed`."""
    real = Path(os.path.realpath(Path(text).expanduser()))
    if not any(real == root or root in real.parents for root in roots):
        offered = ", ".join(map(str, roots)) or "none"
        raise FolderNotAllowed(
            f"{what} {text!r} is not under a folder this server may read (--folder: {offered}); start lorastack "
            "serve --folder DIR, or upload a zip"
        )
    return real
