"""File-level operations behind ``lorastack inspect`` and ``lorastack convert``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .constants import FORMATS
from .errors import AdapterFileError, UnknownFormatError
from .files import autov2, autov3, check_path, file_and_tensor_sha256
from .reading import read_adapter
from .writing import write_adapter


def inspect_file(path: str | Path, allow_pickle: bool = False) -> dict[str, Any]:
    """Everything lorastack can tell about an adapter file, JSON-ready."""
    path = check_path(path)
    adapter = read_adapter(path, allow_pickle=allow_pickle)
    file_hash, data_hash = file_and_tensor_sha256(path)
    return {
        "path": str(path),
        "size": path.stat().st_size,
        **adapter.summary(),
        "sha256": file_hash,
        "tensor_sha256": data_hash,
        "autov2": autov2(file_hash),
        "autov3": autov3(data_hash),
        "metadata": adapter.metadata.as_dict(),
        "header": adapter.metadata.raw,
    }


def convert_file(
    src: str | Path,
    dst: str | Path,
    to: str,
    allow_pickle: bool = False,
    family: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Read ``src`` in any supported format and write it to ``dst`` in format ``to``, atomically."""
    if to not in FORMATS:
        raise UnknownFormatError(f"Unknown format {to!r}; choose one of {', '.join(FORMATS)}.")
    src, dst = check_path(src), Path(dst)
    if dst.exists() and not overwrite:
        raise AdapterFileError("already exists; choose another output path or pass --force", dst)
    adapter = read_adapter(src, allow_pickle=allow_pickle)
    return write_adapter(adapter, dst, format=to, family=family)
