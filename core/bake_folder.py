"""Putting a baked diffusers folder in place so that a kill at any instant leaves the old folder or the new one.

A folder cannot be replaced by one ``rename`` as a file can (``rename`` onto a non-empty folder fails). Two ways:

* Linux (``renameat2`` with ``RENAME_EXCHANGE``, glibc 2.28+, on ext4, xfs, btrfs, tmpfs and most local
  filesystems): the new folder and the old one swap names in one atomic step, so a complete folder is at the path
  at every instant; the old one, now at the temporary name, is removed after.
* Elsewhere (macOS, Windows, filesystems without the exchange): the old folder is first moved aside to
  ``.NAME.<random>.old/folder``, then the new one is renamed in. A kill between the two renames leaves the path
  missing for a moment, with the old folder complete aside; the next bake to the same path (or
  :func:`recover`) moves it back before doing anything else, so the old folder is what a reader finds again.

The new folder is written beside the output as ``.NAME.<pid>.<random>.tmp``. A kill leaves it there (while it is
written, or, after an exchange, holding the old folder); the next bake to the same path removes those whose writing
process is gone, and never one a bake still running (its process alive) is writing.

Python's standard library has no binding for ``renameat2``; it is called through ``ctypes`` for that reason.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2():
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None


#: the libc call, or ``None`` where there is none (set to ``None`` to use the move-aside order)
EXCHANGE = _renameat2() if os.name == "posix" else None


def exchange(a: Path, b: Path) -> bool:
    """Swap the names of ``a`` and ``b`` atomically; ``False`` where the platform or filesystem cannot."""
    if EXCHANGE is None:
        return False
    rc = EXCHANGE(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    return rc == 0


#: ``tempfile.mkdtemp``'s random part: 8 of ``[a-z0-9_]``, never a dot (so ``baked.v2``'s folders are not ``baked``'s)
_RANDOM = r"[a-z0-9_]{8}"


def temporary_prefix(output: Path) -> str:
    """The ``mkdtemp`` prefix of a new folder for ``output``: its name and this process's id."""
    return f".{output.name}.{os.getpid()}."


def _asides(output: Path) -> list[Path]:
    pattern = re.compile(rf"\.{re.escape(output.name)}\.{_RANDOM}\.old")
    return sorted(p for p in output.parent.glob(f".{output.name}.*.old") if pattern.fullmatch(p.name))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process, or a platform that cannot tell: leave its folder
    return True


def stale_temporaries(output: Path) -> list[Path]:
    """The ``.NAME.<pid>.<random>.tmp`` folders of ``output`` whose writing process is gone (a killed bake)."""
    pattern = re.compile(rf"\.{re.escape(output.name)}\.(\d+)\.{_RANDOM}\.tmp")
    found = []
    for path in output.parent.glob(f".{output.name}.*.tmp"):
        match = pattern.fullmatch(path.name)
        if match and path.is_dir() and not _alive(int(match.group(1))):
            found.append(path)
    return sorted(found)


def recover(output: Path) -> bool:
    """An old folder left aside by a killed replacement is moved back to ``output`` when nothing is there; the
    asides of a completed replacement and the new folders of killed bakes are removed. ``True`` when a folder was
    moved back."""
    for stale in stale_temporaries(output):
        shutil.rmtree(stale, ignore_errors=True)
    moved = False
    for aside in _asides(output):
        folder = aside / "folder"
        if not output.exists() and (folder / "model_index.json").is_file():
            os.replace(folder, output)
            moved = True
        shutil.rmtree(aside, ignore_errors=True)
    return moved


def replace_folder(new: Path, output: Path, fsync_dir) -> None:
    """Put the complete folder ``new`` at ``output`` (replacing what is there; see the module docstring)."""
    import tempfile

    from lorastack.faults import crash_point

    parent = output.absolute().parent
    if not output.exists():
        os.replace(new, output)
    elif exchange(new, output):
        crash_point("bake.folder-exchanged")
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now names the old folder
    else:
        aside = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=parent))
        os.replace(output, aside / "folder")
        fsync_dir(parent)
        crash_point("bake.folder-old-aside")
        os.replace(new, output)
        fsync_dir(parent)
        shutil.rmtree(aside, ignore_errors=True)
    fsync_dir(parent)
