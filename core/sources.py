"""Turn what a user types for an adapter (``--lora style.safetensors:0.8``) into a name, a source and a scale."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ScaleError, UnknownAdapterError
from .stack import NAME_PATTERN


@dataclass(frozen=True)
class AdapterRequest:
    name: str
    source: str
    scale: Any = 1.0


def parse_lora_option(value: str) -> AdapterRequest:
    """``[NAME=]SOURCE[:SCALE]``: the scale is the last ``:`` part when it is a number (so ``style:v2:0.8`` works)."""
    name = None
    head, sep, tail = value.rpartition(":")
    source, scale = value, 1.0
    if sep and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", tail.strip()):
        source, scale = head, float(tail)
    if "=" in source and NAME_PATTERN.match(source.split("=", 1)[0]):
        name, source = source.split("=", 1)
    if not source:
        raise ScaleError(f"--lora {value!r} names no adapter")
    return AdapterRequest(name or default_name(source), source, scale)


def default_name(source: str) -> str:
    """An adapter name from a file path or reference: the file's stem, tidied to what names may hold."""
    stem = Path(source).stem if source.endswith((".safetensors", ".ckpt", ".pt", ".bin")) else source
    name = re.sub(r"[^A-Za-z0-9_.@/+-]", "_", stem).lstrip("_.-/@+") or "adapter"
    return name[:200]


def unique_names(requests: list[AdapterRequest]) -> list[AdapterRequest]:
    """Give repeated names a numeric suffix, in order."""
    seen: dict[str, int] = {}
    out = []
    for request in requests:
        count = seen.get(request.name, 0)
        seen[request.name] = count + 1
        out.append(
            request if count == 0 else AdapterRequest(f"{request.name}-{count + 1}", request.source, request.scale)
        )
    return out


def resolve_adapter(source: str, registry=None) -> tuple[Path, str]:
    """A file path, or a registry reference (``name``, ``name:tag``, ``name@N``) → (file to load, label to record).

    Registry files are re-hashed before use (a corrupt blob is refused), and the label is the immutable
    ``name@N``, so a recipe names exactly the version it used.
    """
    path = Path(source).expanduser()
    if path.is_file() or path.suffix.lower() in (".safetensors", ".ckpt", ".pt", ".bin"):
        return path, str(source)  # the reader reports a missing file by name
    from lorastack.registry import InvalidNameError, NotFoundError, Registry

    registry = registry or Registry()
    try:
        version, blob = registry.adapter_path(source)
    except InvalidNameError:
        raise UnknownAdapterError(
            f"{source}: no such file, and not a registry reference (name[:tag] or name@N)"
        ) from None
    except NotFoundError as e:
        raise UnknownAdapterError(f"{source}: no such file, and {e}") from None
    return blob, version.ref
