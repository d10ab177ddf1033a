"""Writing results: output paths checked before the work starts, and written atomically.

Only regular files are ever replaced. A rename over whatever stands at the path would turn a FIFO, a device node
(``/dev/full`` as root) or a symbolic link to stdout into a regular file, so those are refused, and a symbolic link
to a regular file is written through (the link stays). Missing, read-only or impossible paths are refused before
any work, so minutes of generation or training are never lost to a bad ``-o``.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError

# The process umask, read once: a rename keeps the temporary file's mode, and mkstemp creates it 0600.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


_KINDS = (
    (stat.S_ISREG, "a file"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, for a message ("a FIFO (named pipe)")."""
    return next((label for test, label in _KINDS if test(mode)), "not a regular file")


def _replaceable(path: Path) -> tuple[Path, int | None]:
    """The regular file a write to ``path`` replaces (a symlink's target; the link is kept) and its mode, or
    ``(path, None)`` when nothing is there. Anything but a regular file is an :class:`OutputError`."""
    if not os.path.lexists(path):
        return path, None
    try:
        st = os.stat(path)  # follows links
    except FileNotFoundError:
        raise OutputError(f"is a symbolic link to {os.readlink(path)}, which does not exist", path) from None
    except OSError as e:
        raise OutputError(f"cannot be examined ({e.strerror or e})", path) from None
    if not stat.S_ISREG(st.st_mode):
        via = " (through a symbolic link)" if path.is_symlink() else ""
        raise OutputError(f"is {file_kind(st.st_mode)}{via}; lorastack only writes or replaces regular files", path)
    return Path(os.path.realpath(path)), stat.S_IMODE(st.st_mode)


def _probe_writable(folder: Path, path: Path) -> None:
    """Create and remove a file in ``folder``: the one test that holds for root, ACLs and read-only mounts."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".lorastack-probe-", dir=folder)
    except OSError as e:
        raise OutputError(f"cannot write into the folder {folder} ({e.strerror or e})", path) from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: str | Path, overwrite: bool = False) -> Path:
    """Check, before any work, that a single result can be written to ``path``; the path to write.

    Refused with an :class:`OutputError` naming the reason: a folder, a FIFO, a device or a socket (also behind a
    symbolic link), an existing file without ``overwrite``, a parent folder that is missing, a file, or not
    writable. A symbolic link to a regular file is written through (the link stays).
    """
    path = Path(path)
    target, mode = _replaceable(path)
    if mode is not None and not overwrite:
        raise OutputError("already exists; choose another path or pass --force", path)
    parent = target.parent
    if not parent.exists():
        raise OutputError(f"the folder {parent} does not exist", path)
    if not parent.is_dir():
        raise OutputError(f"{parent} is a file, not a folder", path)
    _check_name_lengths(Path(target.name), parent)
    _probe_writable(parent, path)
    return path


def check_output_dir(path: str | Path) -> Path:
    """Check, before any work, that ``path`` is (or can be made) a writable folder for several results."""
    path = Path(path)
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.stat(probe)
    except OSError as e:
        raise OutputError(f"cannot be examined ({e.strerror or e})", probe) from None
    if not stat.S_ISDIR(st.st_mode):
        if probe == path:
            raise OutputError(f"exists and is {file_kind(st.st_mode)}, not a folder", path)
        raise OutputError(f"cannot be created: {probe} is {file_kind(st.st_mode)}, not a folder", path)
    _check_name_lengths(path, probe)
    _probe_writable(probe, path)
    return path


def _check_name_lengths(path: Path, existing: Path) -> None:
    """Refuse a name the file system cannot hold before the work, not when the result is written."""
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # pragma: no cover - Windows has no pathconf
        limit = 255
    long = next((part for part in path.parts if len(os.fsencode(part)) > limit), None)
    if long is not None:
        raise OutputError(f"has a name of {len(os.fsencode(long))} bytes; this file system allows {limit}", path)


@contextmanager
def atomic_path(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write (with any library's own writer); when the block
    ends without an error it is renamed over ``path``, else removed. Readers see the old file or the whole new one.

    Only a regular file is ever replaced (through a symbolic link, the link's target); the new file gets the mode
    of the file it replaces, else the usual ``0666 & ~umask``. ``durable`` also fsyncs the file and the folder, so
    a crash after the block cannot leave a file that is shorter than what was written (caches skip it).
    The temporary name ends with ``path``'s suffix, so writers that choose the format by suffix still do.
    """
    target, mode = _replaceable(Path(path))
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if hasattr(os, "chmod"):  # pragma: no branch - Windows has no file modes to keep
            os.chmod(tmp, mode if mode is not None else 0o666 & ~_UMASK)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(target.parent)


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` over ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on folders
        pass
    finally:
        os.close(fd)
