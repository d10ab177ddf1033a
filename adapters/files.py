"""Reading and writing weight files: safetensors (validated), opt-in pickle, hashes, atomic writes.

The safetensors header is parsed and checked here before the file is handed to ``safetensors``: the library
reports every malformed file with the same generic ``SafetensorError``, and users deserve to be told whether the
file is truncated, its header is not JSON, or a tensor's byte range does not match its dtype and shape.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import AdapterFileError, UnsupportedAdapterError, quoted, shown
from .outputs import atomic_write_bytes, check_output_file, file_kind

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
#: Header size limit of the safetensors format (100 MB), enforced by the library too.
MAX_HEADER_BYTES = 100_000_000
#: Tensors one file may declare (real checkpoints have a few thousand); more is refused before parsing, since a
#: 100 MB header of empty entries would otherwise take gigabytes of memory to parse.
MAX_TENSORS = 100_000
#: Dimensions of one tensor (adapter tensors have at most 4; torch itself stops at 64).
MAX_DIMS = 8
#: The extent of a shape (the product of its dimensions, zeros counted as 1): what torch computes strides from.
#: A tensor with data is bounded by the file; this bounds empty ones such as [0, 2**62, 2**62].
MAX_EXTENT = 2**48
HASH_CHUNK = 1 << 20
#: Files up to this size are read into memory before they are parsed; larger ones are memory-mapped.
IN_MEMORY_BYTES = 2 << 30

#: safetensors dtype codes → (bytes per element, name of the torch dtype).
DTYPES: dict[str, tuple[int, str]] = {
    "F64": (8, "float64"),
    "F32": (4, "float32"),
    "F16": (2, "float16"),
    "BF16": (2, "bfloat16"),
    "I64": (8, "int64"),
    "I32": (4, "int32"),
    "I16": (2, "int16"),
    "I8": (1, "int8"),
    "U8": (1, "uint8"),
    "BOOL": (1, "bool"),
    "F8_E4M3": (1, "float8_e4m3fn"),
    "F8_E5M2": (1, "float8_e5m2"),
    "U16": (2, "uint16"),
    "U32": (4, "uint32"),
    "U64": (8, "uint64"),
}


def torch_dtype(code: str):
    """The torch dtype for a safetensors dtype code, or ``None`` when this torch lacks it."""
    import torch

    return getattr(torch, DTYPES[code][1], None)


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed, validated header of a safetensors file."""

    header_size: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    @property
    def data_offset(self) -> int:
        return 8 + self.header_size


def check_path(path: str | Path) -> Path:
    """The path as a :class:`Path`, or a typed error if it is missing, not a regular file, or unreadable.

    A FIFO would block the reader for ever and a device (``/dev/zero``) never ends, so only regular files (also
    behind symbolic links) are read.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AdapterFileError("no such file", path) from None
    except OSError as e:
        raise AdapterFileError(f"cannot be read ({e.strerror or e})", path) from None
    if stat.S_ISDIR(st.st_mode):
        raise AdapterFileError("is a directory, not an adapter file", path)
    if not stat.S_ISREG(st.st_mode):
        raise AdapterFileError(f"is {file_kind(st.st_mode)}, not a file; adapters are read from regular files", path)
    if not os.access(path, os.R_OK):
        raise AdapterFileError("permission denied", path)
    return path


def read_safetensors_header(path: str | Path) -> SafetensorsHeader:
    """Parse and validate a safetensors header without loading tensor data."""
    path = check_path(path)
    file_size = path.stat().st_size
    if file_size == 0:
        raise AdapterFileError("file is empty", path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise AdapterFileError(f"file is truncated ({file_size} bytes; a safetensors file needs at least 8)", path)
        (size,) = struct.unpack("<Q", head)
        if size > MAX_HEADER_BYTES:
            raise AdapterFileError(f"header length {size} is over the format's 100 MB limit; not safetensors", path)
        if 8 + size > file_size:
            raise AdapterFileError(f"header length {size} runs past the end of the file ({file_size} bytes)", path)
        raw = f.read(size)
    return parse_safetensors_header(raw, file_size, path)


def parse_safetensors_header(raw: bytes, file_size: int, path: str | Path | None = None) -> SafetensorsHeader:
    if raw.count(b'"data_offsets"') > MAX_TENSORS:
        raise AdapterFileError(f"header declares more than {MAX_TENSORS} tensors; lorastack reads at most that", path)
    try:
        header = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise AdapterFileError(
            "header nests JSON arrays or objects too deeply; not a safetensors file", path
        ) from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, integers over Python's 4300-digit limit
        raise AdapterFileError(
            f"header is not valid JSON ({e.__class__.__name__}); not a safetensors file", path
        ) from None
    if not isinstance(header, dict):
        raise AdapterFileError("header is not a JSON object; not a safetensors file", path)
    if len(header) > MAX_TENSORS + 1:
        raise AdapterFileError(f"header declares more than {MAX_TENSORS} tensors; lorastack reads at most that", path)
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        bad = (
            metadata
            if not isinstance(metadata, dict)
            else next(v for v in metadata.values() if not isinstance(v, str))
        )
        raise AdapterFileError(f"header __metadata__ must map strings to strings, not hold {shown(bad)}", path)
    if _may_hold_surrogates(raw):
        for text in (*header, *metadata, *metadata.values()):
            _check_utf8(text, path)
    data_size = file_size - 8 - len(raw)
    tensors: dict[str, TensorInfo] = {}
    for name, info in header.items():
        tensors[name] = _tensor_info(name, info, data_size, path)
    _check_layout(tensors, data_size, path)
    return SafetensorsHeader(len(raw), tensors, dict(metadata))


def _may_hold_surrogates(raw: bytes) -> bool:
    # JSON's \uD800-\uDFFF escapes: the only way a header decoded from UTF-8 can hold text that is not UTF-8
    return b"\\u" in raw and re.search(rb"\\u[dD][89a-fA-F]", raw) is not None


def _check_utf8(text: str, path) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise AdapterFileError(
            f"header text {shown(text)} holds a lone UTF-16 surrogate, which is not UTF-8; safetensors headers are "
            "UTF-8 text",
            path,
        ) from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor_info(name: str, info: object, data_size: int, path) -> TensorInfo:
    if not isinstance(info, dict):
        raise AdapterFileError(f"header entry {quoted(name)} is {shown(info)}, not an object", path)
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise AdapterFileError(
            f"tensor {quoted(name)} has unknown dtype {quoted(dtype)}; known: {', '.join(DTYPES)}", path
        )
    if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
        raise AdapterFileError(
            f"tensor {quoted(name)} has an invalid shape {shown(shape)}; a shape is a list of integers >= 0", path
        )
    if len(shape) > MAX_DIMS:
        raise AdapterFileError(
            f"tensor {quoted(name)} has {len(shape)} dimensions; lorastack reads tensors of at most {MAX_DIMS}", path
        )
    extent = 1
    for s in shape:
        extent *= max(s, 1)
    if extent > MAX_EXTENT:
        raise AdapterFileError(
            f"tensor {quoted(name)} has an absurd shape {shown(shape)}: its dimensions multiply (zeros as 1) to over "
            f"2**{MAX_EXTENT.bit_length() - 1}",
            path,
        )
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise AdapterFileError(
            f"tensor {quoted(name)} has invalid data_offsets {shown(offsets)}; expected [start, end] in bytes", path
        )
    start, end = offsets
    if not 0 <= start <= end <= data_size:
        raise AdapterFileError(
            f"tensor {quoted(name)} spans bytes {shown(start)}..{shown(end)} but the data section has {data_size}; "
            "file truncated?",
            path,
        )
    expected = math.prod(shape) * DTYPES[dtype][0]
    if end - start != expected:
        raise AdapterFileError(
            f"tensor {quoted(name)} ({dtype}, shape {shape}) needs {expected} bytes but its range holds {end - start}",
            path,
        )
    return TensorInfo(dtype, tuple(shape), start, end)


def _check_layout(tensors: dict[str, TensorInfo], data_size: int, path) -> None:
    position = 0
    for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if info.start != position:
            raise AdapterFileError(f"tensor {quoted(name)} starts at byte {info.start}, expected {position}", path)
        position = info.end
    if position != data_size:
        raise AdapterFileError(f"the data section has {data_size - position} bytes that no tensor owns", path)


def load_safetensors(path: str | Path) -> tuple[dict, dict[str, str]]:
    """Validate, then load all tensors (on CPU) and the header metadata."""
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    path = check_path(path)
    size = path.stat().st_size
    if size > IN_MEMORY_BYTES:  # mapped: a file truncated while it is read would kill the process (SIGBUS)
        header = read_safetensors_header(path)
        check_torch_dtypes(header, path)
        loading = lambda: load_file(str(path), device="cpu")  # noqa: E731
    else:  # read once, then parsed: the header checked is the one loaded, and a shrinking file is an error
        with open(path, "rb") as f:
            data = f.read(size + 1)
        if len(data) != size:
            raise AdapterFileError(f"changed size while it was read ({size} → {len(data)} bytes); read it again", path)
        header = _header_of(data, path)
        check_torch_dtypes(header, path)
        loading = lambda: load(data)  # noqa: E731
    try:
        tensors = loading()
    except (SafetensorError, OSError, RuntimeError, ValueError, TypeError, OverflowError) as e:
        raise AdapterFileError(f"cannot load tensors: {library_error(e)}", path) from e
    return tensors, header.metadata


def _header_of(data: bytes, path) -> SafetensorsHeader:
    """The validated header of a safetensors file held in memory."""
    if not data:
        raise AdapterFileError("file is empty", path)
    if len(data) < 8:
        raise AdapterFileError(f"file is truncated ({len(data)} bytes; a safetensors file needs at least 8)", path)
    (size,) = struct.unpack("<Q", data[:8])
    if size > MAX_HEADER_BYTES:
        raise AdapterFileError(f"header length {size} is over the format's 100 MB limit; not safetensors", path)
    if 8 + size > len(data):
        raise AdapterFileError(f"header length {size} runs past the end of the file ({len(data)} bytes)", path)
    return parse_safetensors_header(data[8 : 8 + size], len(data), path)


def check_torch_dtypes(header: SafetensorsHeader, path) -> None:
    """An :class:`UnsupportedAdapterError` for the first tensor whose dtype this torch lacks."""
    for name, info in header.tensors.items():
        if torch_dtype(info.dtype) is None:
            raise UnsupportedAdapterError(
                f"tensor {quoted(name)} has dtype {info.dtype}, which this torch cannot hold", path
            )


def library_error(e: BaseException, limit: int = 200) -> str:
    """A library's error as one short line."""
    lines = str(e).strip().splitlines() or [type(e).__name__]
    text = lines[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_pickle(path: str | Path) -> tuple[dict, dict[str, str]]:
    """Load a pickled state dict with ``weights_only=True`` (no code execution). Callers opt in explicitly."""
    import torch

    path = check_path(path)
    if path.stat().st_size == 0:
        raise AdapterFileError("file is empty", path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or unsafe pickles
        raise AdapterFileError(f"cannot load pickle with weights_only=True: {library_error(e)}", path) from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise AdapterFileError(f"pickle holds a {type(obj).__name__}, not a state dict", path)
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    for name, t in tensors.items():  # a pickle can hold tensors no safetensors file can: sparse, without data
        if t.layout != torch.strided or t.is_quantized:
            kind = "quantized" if t.is_quantized else str(t.layout)
            raise UnsupportedAdapterError(f"tensor {quoted(name)} is {kind}; lorastack reads dense tensors", path)
        if t.device.type != "cpu":
            raise UnsupportedAdapterError(f"tensor {quoted(name)} holds no data (device {t.device.type})", path)
    return tensors, {}


def load_weights(path: str | Path, allow_pickle: bool = False) -> tuple[dict, dict[str, str]]:
    """Load a weights file by its suffix. Pickle files are refused unless ``allow_pickle``."""
    path = check_path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UnsupportedAdapterError(
                f"is a pickle file ({suffix}), which can run code when loaded; convert it to .safetensors or pass "
                "--allow-pickle to load it with weights_only=True",
                path,
            )
        return load_pickle(path)
    return load_safetensors(path)


# --- hashes ----------------------------------------------------------------------------------------------------


def _iter_chunks(f, start: int = 0) -> Iterator[bytes]:
    f.seek(start)
    while chunk := f.read(HASH_CHUNK):
        yield chunk


def file_sha256(path: str | Path) -> str:
    """sha256 of the whole file (the Hub's LFS oid, civitai's SHA256/AutoV2), read in chunks."""
    h = hashlib.sha256()
    with open(check_path(path), "rb") as f:
        for chunk in _iter_chunks(f):
            h.update(chunk)
    return h.hexdigest()


def _data_offset(path: Path) -> int:
    """Where a file's tensor data starts: after the header of a safetensors file (told by its content, so that
    registry blobs, which have no suffix, count), 0 for pickles and other files."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return 0
    try:
        return read_safetensors_header(path).data_offset
    except AdapterFileError:
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:
            raise
        return 0


def tensor_sha256(path: str | Path) -> str:
    """sha256 of the tensor data only, after the header (kohya ``sshs_model_hash``, civitai AutoV3).

    It survives edits of the header metadata. For files that are not safetensors it equals :func:`file_sha256`.
    """
    return file_and_tensor_sha256(path)[1]


def file_and_tensor_sha256(path: str | Path) -> tuple[str, str]:
    """Both hashes in a single read of the file."""
    path = check_path(path)
    offset = _data_offset(path)
    whole, data = hashlib.sha256(), hashlib.sha256()
    seen = 0
    with open(path, "rb") as f:
        for chunk in _iter_chunks(f):
            whole.update(chunk)
            if seen + len(chunk) > offset:
                data.update(chunk[max(0, offset - seen) :])
            seen += len(chunk)
    return whole.hexdigest(), data.hexdigest()


def autov2(file_hash: str) -> str:
    """civitai's short AutoV2 hash: the first 10 hex digits of the file sha256."""
    return file_hash[:10].upper()


def autov3(tensor_hash: str) -> str:
    """civitai's short AutoV3 hash (A1111's "addnet" short hash): the first 12 hex digits of the tensor sha256."""
    return tensor_hash[:12].upper()


# --- writing ---------------------------------------------------------------------------------------------------


def serialize_safetensors(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes that depend only on the tensors and metadata.

    ``safetensors.torch.save`` emits the header from a hash map, so the same content gives a different file (and
    file hash) on every save; here the header is re-emitted with sorted keys. The data section is the library's.
    """
    from safetensors.torch import save

    blob = save(_unshared(tensors))
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + size])
    header.pop("__metadata__", None)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data section stays 8-byte aligned
    return struct.pack("<Q", len(text)) + text + blob[8 + size :]


def _unshared(tensors: dict) -> dict:
    """CPU, contiguous tensors, none sharing memory with another (safetensors refuses shared storage; the
    projections split from one fused module share their down matrix)."""
    out, seen = {}, set()
    for k, v in tensors.items():
        t = v.detach().contiguous().cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[k] = t
    return out


def atomic_write_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str]) -> Path:
    """Write a safetensors file to a temporary name beside ``path``, fsync it, then rename it into place."""
    path = Path(path)
    check_output_file(path, overwrite=True)
    atomic_write_bytes(path, serialize_safetensors(tensors, metadata))
    return path
