"""The registry folder itself: is it usable, writable, full; and its errors as one line a user can act on."""

from __future__ import annotations

import errno
import functools
import os
import sqlite3
from pathlib import Path

from .db import index_error
from .errors import CorruptIndexError, NoSpaceError, ReadOnlyError, RegistryError

RESERVE_FILE = "reserve"
#: Space kept back for deletions: a removal's WAL frames and the index pages it rewrites fit in far less.
RESERVE_BYTES = 1 << 20
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NO_WRITE = {errno.EROFS, errno.EACCES, errno.EPERM}


def guarded(method):
    """SQLite and file-system failures inside a registry operation become one-line registry errors."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as e:
            error = index_error(e, self.index_path)
            if error is None:
                raise
            raise error from None
        except OSError as e:
            raise os_error(e, self.root) from None

    return run


def check_root(root: Path, index: Path) -> None:
    """A registry folder that is a file (``LORASTACK_HOME`` pointing at one), or an index that is not a file."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        where = "is" if probe == root else f"cannot be made: {probe} is"
        raise RegistryError(
            f"{root}: the registry folder {where} a file, not a folder; point LORASTACK_HOME at a folder"
        )
    if os.path.lexists(index) and not index.is_file():
        raise CorruptIndexError(
            f"{index}: is not a file (a folder, a FIFO or a device stands where the registry index should be); "
            "move it away"
        )


def writable(root: Path, index: Path) -> bool:
    return os.access(root, os.W_OK) and (not index.exists() or os.access(index, os.W_OK))


def check_writable(root: Path, index: Path) -> None:
    probe = root
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK) or (index.exists() and not os.access(index, os.W_OK)):
        raise ReadOnlyError(f"{root}: the registry folder is read-only; nothing was changed")


def os_error(e: OSError, root: Path) -> RegistryError:
    where = e.filename or root
    reason = e.strerror or str(e)
    if e.errno in _NO_SPACE:
        return NoSpaceError(
            f"{where}: no space left on the device ({reason}); nothing was changed. Free space (lorastack gc, "
            "lorastack rm) and try again"
        )
    if e.errno in _NO_WRITE:
        return ReadOnlyError(f"{where}: cannot be written ({reason}); nothing was changed")
    return RegistryError(f"{where}: {reason}")


def ensure_reserve(root: Path) -> None:
    """Keep :data:`RESERVE_BYTES` allocated, so a full disk can still commit a removal (best effort)."""
    reserve = root / RESERVE_FILE
    if reserve.exists():
        return
    try:
        with open(reserve, "wb") as f:
            f.write(b"\0" * RESERVE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        reserve.unlink(missing_ok=True)


def with_space(root: Path, operation):
    """Run a deletion; if the disk is too full to commit it, give back the reserve and try once more."""
    try:
        return operation()
    except sqlite3.OperationalError as e:
        reserve = root / RESERVE_FILE
        if "full" not in str(e) or not reserve.exists():
            raise
        reserve.unlink()
        return operation()
