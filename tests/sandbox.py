"""Running lorastack where a test cannot put it otherwise: on a read-only mount, a full disk, as another user.

Tests run as root, who can write anywhere, so a read-only registry or a full disk has to be real: ``unshare -rm``
gives the child its own user and mount namespace, where it may bind-mount a folder read-only or mount a small
tmpfs, and nothing outside sees it. ``setpriv`` runs a command as ``nobody``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "lorastack.cli.main"]


@functools.cache
def can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


needs_unshare = pytest.mark.skipif(
    not can_unshare(), reason="needs `unshare -rm` (user and mount namespaces) for a real read-only or full disk"
)


def in_namespace(shell: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``shell`` (sh syntax) in a new user + mount namespace; ``$CLI`` runs lorastack's command line."""
    full = {**os.environ, "CLI": " ".join(CLI), **(env or {})}
    return subprocess.run(
        ["unshare", "-rm", "sh", "-ec", shell], capture_output=True, text=True, env=full, timeout=timeout
    )


def as_nobody(args: list[str], env: dict | None = None, cwd: str = "/tmp") -> subprocess.CompletedProcess:
    """Run ``args`` as the user ``nobody`` (skips the test when that is impossible)."""
    if not shutil.which("setpriv") or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run a command as another user")
    command = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *args]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd)
