"""Files kept in place: versions whose adapter file is a user's file (found by ``lorastack scan``), not a blob.

An in-place file record holds the file's absolute path and the (device, inode, size, mtime) it had when it was
hashed. Nothing in the registry ever deletes, moves or writes such a file: ``rm`` and ``gc`` only ever delete under
``blobs/``. Before use the file is re-hashed (``verify``) or at least its size checked; a file that is gone is
reported as missing, one that changed as changed, each with the command that brings the record up to date.

:func:`read_once` is the scan's single read of a file: the safetensors header is parsed from the first bytes, the
adapter recognised from it (so a 6 GB checkpoint is refused after reading its header, not all of it), and the rest
streamed through both hashes: the file sha256 (A1111/Civitai AutoV2, the Hub's LFS oid, and the registry's own key:
blobs are named by it) and the tensor-data sha256 (AutoV3, kohya's ``sshs_model_hash``, which survives header edits;
the same value :func:`lorastack.adapters.files.file_and_tensor_sha256` computes).
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from lorastack.adapters.errors import AdapterError, AdapterFileError
from lorastack.adapters.files import (
    HASH_CHUNK,
    MAX_HEADER_BYTES,
    check_torch_dtypes,
    file_sha256,
    parse_safetensors_header,
    torch_dtype,
)

from .errors import IntegrityError

INPLACE = "inplace"
BLOB = "blob"
#: Alpha scalars are read from the bytes already in memory when they lie in the first chunks, else with one small
#: positioned read each (a few bytes, not a second pass over the file).
HEAD_BYTES = HASH_CHUNK
#: Files at least this large are hashed with the two digests on two threads (see :func:`_hash_rest`).
PARALLEL_HASH_BYTES = 8 << 20
_QUEUED = 4


@dataclass(frozen=True)
class FileStat:
    """What says a file is unchanged since it was hashed (a rescan compares these before reading a byte)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStat:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class ReadFile:
    """One file read by :func:`read_once`: its stat, its hashes and the adapter (structure only) it holds."""

    path: Path
    stat: FileStat
    sha256: str
    tensor_sha256: str
    adapter: object  # lorastack.adapters.Adapter, shape-only tensors


def record_fields(row) -> tuple[str, str | None, float | None]:
    """``(location, location_path, missing_since)`` of a ``files`` row (an index opened read-only before the in-place
    migration has no such columns: all its files are blobs)."""
    keys = row.keys()
    if "location" not in keys:
        return BLOB, None, None
    return row["location"] or BLOB, row["location_path"], row["missing_since"]


def checked_path(version, record, verify: bool) -> Path:
    """The in-place file of ``version``, after checking it is there and (``verify``) still holds its bytes."""
    path = Path(record.location_path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise IntegrityError(
            f"{version.ref}: its file {path} is missing (moved or deleted since it was scanned); run lorastack scan "
            "on the folder it is in now"
        ) from None
    except OSError as e:
        raise IntegrityError(f"{version.ref}: its file {path} cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise IntegrityError(f"{version.ref}: its file {path} is no longer a regular file")
    if st.st_size != record.size or (verify and file_sha256(path) != record.sha256):
        raise IntegrityError(
            f"{version.ref}: its file {path} changed since it was scanned; run lorastack scan on its folder to "
            "record the new bytes as a new version"
        )
    return path


def verify_records(db, files=None) -> tuple[list[tuple[str, int]], list[dict]]:
    """What ``verify`` checks: ``(sha256, size)`` of the blobs, and the in-place records (path, size, sha256), of
    ``files`` (one version's :class:`FileRecord` list) or of the whole index."""
    if files is not None:
        blobs = [(f.sha256, f.size) for f in files if f.location != INPLACE]
        placed = [{"location_path": f.location_path, "size": f.size, "sha256": f.sha256,
                   "missing_since": f.missing_since} for f in files if f.location == INPLACE]  # fmt: skip
        return blobs, placed
    if not any(c[1] == "location" for c in db.execute("PRAGMA table_info(files)")):
        return [(r[0], r[1]) for r in db.execute("SELECT DISTINCT sha256, size FROM files")], []
    blobs = [
        (r[0], r[1]) for r in db.execute("SELECT DISTINCT sha256, size FROM files WHERE location != ?", (INPLACE,))
    ]
    placed = [
        dict(r)
        for r in db.execute(
            "SELECT DISTINCT location_path, size, sha256, missing_since FROM files WHERE location = ?",
            (INPLACE,),
        )
    ]
    return blobs, placed


def problem(record) -> str | None:
    """``"missing"``, ``"corrupt"`` (changed bytes) or ``None`` for an in-place record: what ``verify`` reports."""
    if record["missing_since"] is not None:  # a rescan found it gone (or its bytes replaced): still missing
        return "missing"
    path = Path(record["location_path"])
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    if not stat.S_ISREG(st.st_mode):
        return "missing"
    if st.st_size != record["size"]:
        return "corrupt"
    try:
        return None if file_sha256(path) == record["sha256"] else "corrupt"
    except (OSError, AdapterError):
        return "missing"


def read_once(path: Path) -> ReadFile:
    """Read ``path`` once: recognise the adapter from its header, then hash all of it (see the module docstring).

    Raises the reader's own errors (:class:`AdapterFileError`, ``NotAnAdapterError``, …) for what is not an
    adapter, and :class:`AdapterFileError` for a file that changed while it was read.
    """
    from lorastack.adapters.reading import parse_state_dict

    with open(path, "rb") as f:
        before = os.fstat(f.fileno())  # the file opened, whatever the walk saw
        if not stat.S_ISREG(before.st_mode):
            raise AdapterFileError("is not a regular file", path)
        size = before.st_size
        if size < 8:
            raise AdapterFileError(f"file is truncated ({size} bytes; a safetensors file needs at least 8)", path)
        head = f.read(HEAD_BYTES)
        (n,) = struct.unpack("<Q", head[:8])
        if n > MAX_HEADER_BYTES:
            raise AdapterFileError(f"header length {n} is over the format's 100 MB limit; not safetensors", path)
        if 8 + n > size:
            raise AdapterFileError(f"header length {n} runs past the end of the file ({size} bytes)", path)
        chunks = [head]
        while sum(map(len, chunks)) < 8 + n:  # a header longer than the first chunk (bounded above)
            more = f.read(HEAD_BYTES)
            if not more:
                raise AdapterFileError("file shrank while it was read", path)
            chunks.append(more)
        head = b"".join(chunks)
        header = parse_safetensors_header(head[8 : 8 + n], size, path)
        check_torch_dtypes(header, path)
        offset = header.data_offset
        state = _structure(f, header, head, offset)
        try:
            adapter = parse_state_dict(state, header.metadata, check_values=False)
        except AdapterError as e:
            raise e.with_path(path) from None
        whole, data = hashlib.sha256(head), hashlib.sha256(memoryview(head)[offset:])
        read = len(head) + _hash_rest(f, size - len(head), whole, data)
        after = os.fstat(f.fileno())
    if read != size or FileStat.of(after) != FileStat.of(before):
        raise AdapterFileError(f"changed while it was read ({size} → {read} bytes); it is read again next scan", path)
    adapter.path = path
    return ReadFile(path, FileStat.of(before), whole.hexdigest(), data.hexdigest(), adapter)


def _hash_rest(f, expected: int, whole, data) -> int:
    """Stream the rest of ``f`` through both digests; the bytes read.

    Chunks are read into buffers used in turn (no allocation per chunk). On a large file the tensor digest runs on
    a second thread (hashlib releases the GIL), so one file hashes at the speed of one digest, not two: a scan of a
    single new 200 MB LoRA is not twice as slow as its sha256. Small files are hashed on the calling thread (the
    scan reads several at once, so the cores are busy anyway, and a thread per file would cost more than it saves).
    """
    if expected < PARALLEL_HASH_BYTES:
        read = 0
        while chunk := f.read(HASH_CHUNK):
            whole.update(chunk)
            data.update(chunk)
            read += len(chunk)
        return read
    from .blobs import _Worker

    # two buffers more than the hashing thread can hold queued: none is overwritten while it is being hashed
    buffers = [bytearray(HASH_CHUNK) for _ in range(_QUEUED + 3)]
    read, turn = 0, 0
    with _Worker(data.update, maxsize=_QUEUED) as hasher:
        while True:
            buffer = buffers[turn % len(buffers)]
            n = f.readinto(buffer)
            if not n:
                break
            view = memoryview(buffer)[:n]
            hasher.submit(view)
            whole.update(view)
            read += n
            turn += 1
    return read


def _structure(f, header, head: bytes, offset: int) -> dict:
    """Shape-only tensors for every entry, with the real values of the alpha scalars (what the reader needs)."""
    import torch

    state = {}
    for name, info in header.tensors.items():
        dtype = torch_dtype(info.dtype)
        if name.endswith(".alpha") and math.prod(info.shape) == 1:
            start, end = offset + info.start, offset + info.end
            raw = head[start:end] if end <= len(head) else os.pread(f.fileno(), end - start, start)
            if len(raw) != end - start:
                raise AdapterFileError("file shrank while it was read", f.name)
            state[name] = torch.frombuffer(bytearray(raw), dtype=dtype).reshape(info.shape).clone()
        else:
            state[name] = torch.empty(info.shape, dtype=dtype, device="meta")
    return state
