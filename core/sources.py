"""Turn what a user types for an adapter (``--lora style.safetensors:0.8``) into a name, a source and a scale."""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorastack.adapters.errors import AdapterFileError

from .errors import ScaleError, UnknownAdapterError
from .scales import SCALE_RANGE, SCALE_TEXT, brief, check_scale
from .stack import NAME_PATTERN


@dataclass(frozen=True)
class AdapterRequest:
    name: str
    source: str
    scale: Any = 1.0


def parse_lora_option(value: str) -> AdapterRequest:
    """``[NAME=]SOURCE[:SCALE…]``: the scale parts are the trailing ``:`` parts that are numbers or ``key=value``
    (the keys of a ``<lora:…>`` tag: ``te=``, ``unet=``, ``single=0``, ``double.3=0.5``…), so ``style:v2:0.8`` and
    ``flux-style.safetensors:0.8:single=0`` both work.

    The scale must be finite and within ±``MAX_SCALE`` (:mod:`lorastack.core.scales`).
    """
    from .prompts import is_scale_part, parse_tag

    name = None
    parts = value.split(":")
    cut = len(parts)
    while cut > 1 and is_scale_part(parts[cut - 1]):
        cut -= 1
    source, scale_parts = ":".join(parts[:cut]), parts[cut:]
    scale: Any = 1.0
    if len(scale_parts) == 1 and SCALE_TEXT.fullmatch(scale_parts[0].strip()):
        tail = scale_parts[0]
        number = float(tail)
        try:
            scale = check_scale(number, "scale")
        except ScaleError:
            problem = "is out of range" if math.isfinite(number) else "is not a finite number"
            raise ScaleError(
                f"--lora {brief(value)}: the scale {brief(tail.strip())} {problem}; {SCALE_RANGE}"
            ) from None
    elif scale_parts:
        try:
            _, scale = parse_tag(":".join(["x", *scale_parts]), f"<lora:x:{':'.join(scale_parts)}>")
        except ScaleError as e:
            raise ScaleError(f"--lora {brief(value)}: {str(e).split(': ', 1)[-1]}") from None
    if "=" in source and NAME_PATTERN.match(source.split("=", 1)[0]):
        name, source = source.split("=", 1)
    if not source:
        raise ScaleError(f"--lora {brief(value)} names no adapter")
    return AdapterRequest(name or default_name(source), source, scale)


def default_name(source: str) -> str:
    """An adapter name from a file path or reference: the file's stem, tidied to what names may hold."""
    stem = Path(source).stem if source.endswith((".safetensors", ".ckpt", ".pt", ".bin")) else source
    name = re.sub(r"[^A-Za-z0-9_.@/+:-]", "_", stem).lstrip("_.-/@+:") or "adapter"
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


#: Adapters lorastack ships, by the name a user gives (``--lora toy-style``); a registry adapter of that name wins.
BUILTIN_ADAPTERS = {"toy-style": "the toy base's outline style"}


@dataclass(frozen=True)
class AdapterSource:
    """Where an adapter comes from: the file to load, how a recipe names it, and its source's trigger words."""

    path: Path
    label: str
    trigger_words: list[str] | None = None  # None: the file's own (a registry version's are set at import)


def resolve_adapter(source: str, registry=None) -> tuple[Path, str]:
    """A file path, or a registry reference (``name``, ``name:tag``, ``name@N``) → (file to load, label to record).

    Registry files are re-hashed before use (a corrupt blob is refused), and the label is the immutable
    ``name@N``, so a recipe names exactly the version it used.
    """
    found = find_adapter(source, registry)
    return found.path, found.label


def find_adapter(source: str, registry=None) -> AdapterSource:
    """:func:`resolve_adapter`, with the trigger words the registry keeps for the version (``import --trigger``).

    A name no file and no registry entry has may be a built-in adapter (:data:`BUILTIN_ADAPTERS`).
    """
    path = Path(source).expanduser()
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # missing, under a file, a name too long for a path, a NUL byte
        mode = None
    if mode is not None and stat.S_ISREG(mode):
        return AdapterSource(path, str(source))
    if path.suffix.lower() in (".safetensors", ".ckpt", ".pt", ".bin"):  # a file name: not a registry reference
        if mode is None:
            raise AdapterFileError("no such file", path)
        raise AdapterFileError(
            "is a folder" if stat.S_ISDIR(mode) else "is not a regular file (a FIFO or device)", path
        )
    if mode is not None and not stat.S_ISREG(mode):  # a folder or a FIFO named like a reference
        what = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO or device)"
        raise AdapterFileError(f"is {what}; --lora takes an adapter file or a registry reference", path)
    from lorastack.registry import InvalidNameError, NotFoundError, Registry

    registry = registry or Registry()
    try:
        version, blob = registry.adapter_path(source)
    except InvalidNameError:
        raise UnknownAdapterError(
            f"{source}: no such file, and not a registry reference (name[:tag] or name@N)"
        ) from None
    except NotFoundError as e:
        if source in BUILTIN_ADAPTERS:
            from lorastack.toy import STYLE_ADAPTER

            return AdapterSource(STYLE_ADAPTER, source)
        builtin = ", ".join(BUILTIN_ADAPTERS)
        raise UnknownAdapterError(f"{source}: no such file, and {e} (built-in adapters: {builtin})") from None
    from lorastack.registry.uses import record_use

    record_use(registry, version.ref)  # the library's "most used" order; never in the way of the work
    return AdapterSource(blob, version.ref, list(version.trigger_words))
