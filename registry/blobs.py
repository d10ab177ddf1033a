"""Content-addressed blob storage: ``blobs/sha256/ab/abcdef…``, written to a temp file, fsynced, renamed.

A file lock (``lock``) orders blob writes against deletions: imports hold it shared from writing a blob until their
version is committed; gc and removals hold it exclusively while deleting, so they never delete a blob an import is
about to reference.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lorastack.adapters.files import file_sha256
from lorastack.adapters.outputs import fsync_dir
from lorastack.faults import crash_point

from .errors import IntegrityError

CHUNK = 1 << 20
FLUSH_EVERY = 32 << 20
#: The staged copy's name: the adapter reader tells safetensors files by their suffix.
STAGED_NAME = "adapter.safetensors"


@dataclass(frozen=True)
class StagedBlob:
    """A private copy of a file in a scratch folder, hashed while it was written."""

    path: Path
    sha256: str
    tensor_sha256: str | None
    size: int


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    tensor_sha256: str | None
    size: int
    path: Path
    new: bool  # False when identical bytes were already stored
    repaired: bool = False  # a damaged stored copy was replaced by these bytes


def _safetensors_data_offset(head: bytes) -> int | None:
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head[:8])
    return 8 + n


class BlobStore:
    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.tmp = root / "tmp"
        self.lock_path = root / "lock"

    def path(self, sha256: str) -> Path:
        return self.blobs / sha256[:2] / sha256

    @contextlib.contextmanager
    def lock(self, exclusive: bool) -> Iterator[None]:
        """Hold the registry's blob lock (no-op where POSIX locks are missing)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: the grace period protects instead
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A private folder under ``tmp/`` for one import, removed afterwards (``gc`` sweeps it after a crash).

        Hold :meth:`lock` (shared) around it: ``gc`` holds the lock exclusively, so it never sweeps a folder in use.
        """
        self.tmp.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="import-", dir=self.tmp))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def stage(self, source: Path, folder: Path, name: str = STAGED_NAME, safetensors: bool = True) -> StagedBlob:
        """Copy ``source`` into ``folder`` (a :meth:`scratch` folder), hashing it on the way: one read.

        The copy is what gets parsed and stored, so a source rewritten meanwhile cannot be recorded as one adapter
        and stored as another. The whole-file and tensor-data hashes cover the same bytes twice, so the second runs
        on another thread (hashlib releases the GIL); a third starts the disk writeback early, so the final fsync
        is short.
        """
        staged = folder / name
        whole, data = hashlib.sha256(), hashlib.sha256()
        size, offset = 0, None
        with open(source, "rb") as src, open(staged, "wb") as dst:
            with _Worker(data.update) as data_hasher, _Worker(lambda fd: os.fdatasync(fd)) as flusher:
                flushed = 0
                while chunk := src.read(CHUNK):
                    if offset is None and safetensors:
                        offset = _safetensors_data_offset(chunk) or 0
                    if safetensors and size + len(chunk) > offset:
                        data_hasher.submit(chunk[max(0, offset - size) :] if offset > size else chunk)
                    dst.write(chunk)
                    whole.update(chunk)
                    size += len(chunk)
                    if size - flushed >= FLUSH_EVERY:
                        dst.flush()
                        flusher.submit(dst.fileno())
                        flushed = size
            dst.flush()
            os.fsync(dst.fileno())
        return StagedBlob(staged, whole.hexdigest(), data.hexdigest() if safetensors else None, size)

    def stage_bytes(self, data: bytes, folder: Path) -> StagedBlob:
        """Write ``data`` (a small file made in memory: a preview, a thumbnail) into ``folder``, fsynced, under a
        name of its own; its hash is known without a second read."""
        sha256 = hashlib.sha256(data).hexdigest()
        staged = folder / f"{sha256}.blob"
        with open(staged, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return StagedBlob(staged, sha256, None, len(data))

    def commit(self, staged: StagedBlob) -> StoredBlob:
        """Move a staged file into the store under its sha256. Call under :meth:`lock` (shared).

        Identity is the hash, checked: a stored blob is shared only when its bytes really hash to the name, so a
        damaged copy is replaced by the good bytes instead of being referenced again.
        """
        final = self.path(staged.sha256)
        try:
            self.check(staged.sha256, staged.size)
            staged.path.unlink()  # the same bytes are already stored: share the blob
            return StoredBlob(staged.sha256, staged.tensor_sha256, staged.size, final, new=False)
        except IntegrityError:
            pass
        repaired = os.path.lexists(final)
        if (repaired and not final.is_file()) or final.is_symlink():
            self.remove(final)  # a folder or a link in the blob's place: the bytes replace it
        final.parent.mkdir(parents=True, exist_ok=True)
        crash_point("registry.blob.before-rename")
        os.replace(staged.path, final)
        fsync_dir(final.parent)
        crash_point("registry.blob.after-rename")
        return StoredBlob(staged.sha256, staged.tensor_sha256, staged.size, final, new=True, repaired=repaired)

    def store(self, source: Path, safetensors: bool = True) -> StoredBlob:
        """Stage and commit ``source`` in one go. Call under :meth:`lock` (shared)."""
        with self.scratch() as folder:
            return self.commit(self.stage(source, folder, safetensors=safetensors))

    def check(self, sha256: str, size: int | None = None) -> Path:
        """The blob's path after re-hashing it; :class:`IntegrityError` if it is missing or corrupt.

        A blob must be a regular file: a folder or a symbolic link in its place (which could point anywhere) is
        corrupt, not followed.
        """
        path = self.path(sha256)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise IntegrityError(
                f"blob {sha256[:12]} is missing from the registry ({path}); run lorastack verify"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise IntegrityError(f"blob {sha256[:12]} is not a regular file ({path}); the registry copy is corrupt")
        if size is not None and st.st_size != size:
            raise IntegrityError(f"blob {sha256[:12]} has the wrong size; the registry copy is corrupt")
        if file_sha256(path) != sha256:
            raise IntegrityError(f"blob {sha256[:12]} does not match its sha256; the registry copy is corrupt")
        return path

    def all_blobs(self) -> Iterator[Path]:
        """Every entry under ``blobs/``: regular files, and whatever else is there in a blob's place."""
        if self.blobs.exists():
            yield from (p for p in self.blobs.glob("*/*") if len(p.name) == 64)

    @staticmethod
    def remove(path: Path) -> int:
        """Delete a blob or temp entry of any kind (a file, a link, a folder); the bytes it held."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return 0
        if stat.S_ISDIR(st.st_mode):
            size = sum(p.lstat().st_size for p in path.rglob("*"))
            shutil.rmtree(path, ignore_errors=True)
            return size
        path.unlink(missing_ok=True)
        return st.st_size if stat.S_ISREG(st.st_mode) else 0

    def temp_files(self) -> Iterator[Path]:
        """Files and scratch folders under ``tmp/``: what interrupted imports left."""
        if self.tmp.exists():
            yield from sorted(self.tmp.iterdir())


class _Worker:
    """A thread that applies ``fn`` to submitted items in order; ``with`` waits for it and re-raises its error."""

    def __init__(self, fn, maxsize: int = 16):
        import queue
        import threading

        self._fn, self._queue, self._error = fn, queue.Queue(maxsize=maxsize), None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while (item := self._queue.get()) is not _DONE:
            if self._error is None:
                try:
                    self._fn(item)
                except BaseException as e:  # reported to the submitting thread on exit
                    self._error = e

    def submit(self, item) -> None:
        self._queue.put(item)

    def __enter__(self) -> _Worker:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._queue.put(_DONE)
        self._thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error


_DONE = object()


def age_seconds(path: Path) -> float:
    """Seconds since ``path`` itself (not what a link points at) last changed."""
    return time.time() - path.lstat().st_mtime
