"""``lorastack bake``: a base with an adapter stack merged into its weights, or the stack as one adapter.

The stack is applied by :class:`~lorastack.core.stack.AdapterStack` (``W = W₀ + Σ sᵢ·ΔWᵢ`` in float32, rounded
once), so a baked model draws what the stack draws on the base. The output's form decides what is written:

* ``-o model.safetensors`` (a single-file base): the base file with the touched weights replaced, in its original
  layout (:mod:`.bake_layout`), every other tensor as it was; the header records the stack.
* ``-o FOLDER`` (any base): a diffusers folder (``save_pretrained``), written beside the target and renamed into
  place.
* ``--as-lora``: one adapter equal to the stack (``concat``, exact; ``--rank R``: the truncated SVD,
  :mod:`.merge`), with its measured error.

Every adapter must match the base completely (another family, missing layers and shape mismatches are refused
before anything is written).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .arith import RECORD_KEY, ArithmeticInputError, Source


def load_stack(pipe, loras: list[str], blocks: str | None = None, registry=None):
    """The ``--lora`` values loaded (strictly) onto ``pipe``: ``(stack, scales, sources)``."""
    from lorastack.adapters import file_and_tensor_sha256

    from .sources import find_adapter, parse_lora_option, unique_names
    from .stack import AdapterStack

    if not loras:
        raise ArithmeticInputError("no adapters to bake; give --lora FILE[:WEIGHT] (repeat)")
    stack = AdapterStack(pipe)
    scales, sources = {}, []
    requests = unique_names([parse_lora_option(_with_blocks(v, blocks)) for v in loras])
    for request in requests:
        found = find_adapter(request.source, registry)
        stack.load(request.name, found.path, strict=True, label=found.label)
        scales[request.name] = request.scale
        file_hash, data_hash = file_and_tensor_sha256(found.path)
        sources.append(Source(found.label, stack.get(request.name).adapter, request.scale, file_hash, data_hash))
    return stack, scales, sources


def _with_blocks(value: str, blocks: str | None) -> str:
    """``--blocks single=0:double.3=0.5`` appended to a ``--lora`` value that gives no block weights itself."""
    if not blocks:
        return value
    from .prompts import is_scale_part

    parts = value.split(":")
    if any("=" in p and is_scale_part(p) for p in parts[1:]):
        return value
    return f"{value}:{blocks.strip(':')}"


def bake_model(pipe, stack, scales: dict[str, Any], sources: list[Source], output: Path, *, overwrite: bool = False):
    """Activate the stack on ``pipe`` and write the baked model to ``output`` (its form decides how)."""
    from .base import base_info

    stack.activate(scales)
    touched = sorted({m for name in scales for m in stack.get(name).layers})
    record = {
        "method": "bake",
        "sources": [s.record() for s in sources],
        "modules": len(touched),
    }
    info = base_info(pipe)
    if output.suffix.lower() == ".safetensors":
        if info is None or info.kind != "single_file" or not info.location.lower().endswith(".safetensors"):
            raise ArithmeticInputError(
                f"{output}: a single-file bake rewrites a single-file (.safetensors) base in its layout; this base is "
                "a folder, so give -o a folder to write a diffusers folder"
            )
        _write_single_file(pipe, stack, touched, Path(info.location), output, record, overwrite)
        form = "single_file"
    else:
        _write_folder(pipe, output, record, overwrite, info)
        form = "folder"
    return {"output": str(output), "form": form, **record}


def _write_single_file(pipe, stack, touched, base_file: Path, output: Path, record, overwrite) -> None:
    from safetensors import safe_open

    from lorastack.adapters.files import atomic_write_safetensors
    from lorastack.adapters.outputs import check_output_file

    from .bake_layout import original_key, put_rows

    check_output_file(output, overwrite=overwrite)
    if output.resolve() == base_file.resolve():
        raise ArithmeticInputError(f"{output} is the base file itself; write the baked model to another file")
    with safe_open(str(base_file), framework="pt") as f:
        header = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - a safe_open handle, not a dict
    shapes = {k: t.shape for k, t in tensors.items()}
    unet = getattr(pipe, "unet", None)
    config = unet.config if unet is not None else None
    with torch.no_grad():
        for name in touched:
            key, rows, transposed = original_key(name, stack.family, shapes, config)
            weight = stack.index.get(name).weight.detach().float().cpu()
            if not torch.isfinite(weight).all():
                raise ArithmeticInputError(f"the baked weight of {name} holds NaN or infinite values")
            if rows is None and tensors[key].numel() != weight.numel():
                raise ArithmeticInputError(f"{name} does not fit {key} {tuple(shapes[key])} of the base file")
            tensors[key] = put_rows(tensors[key], rows, weight, transposed)
    header[RECORD_KEY] = json.dumps(record, sort_keys=True)
    atomic_write_safetensors(tensors, output, header)


def _write_folder(pipe, output: Path, record, overwrite: bool, info) -> None:
    """``save_pretrained`` into a temporary folder beside ``output``, then put in place so that a reader sees the
    old folder or the whole new one (:mod:`.bake_folder`)."""
    from lorastack.adapters.outputs import check_output_dir, fsync_dir
    from lorastack.faults import crash_point

    from .bake_folder import recover, replace_folder, temporary_prefix

    recover(output)  # a bake killed half-way: its old folder back first, its new folder removed
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        if not overwrite:
            raise ArithmeticInputError(f"{output} exists and is not empty; choose another folder or pass --force")
        if not (output / "model_index.json").is_file():
            raise ArithmeticInputError(f"{output} is not a diffusers folder; lorastack replaces only those")
    parent = output.absolute().parent
    check_output_dir(parent)
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(output), suffix=".tmp", dir=parent))
    try:
        pipe.save_pretrained(tmp)
        if info is not None and info.kind == "folder" and (Path(info.location) / "lorastack.json").is_file():
            shutil.copy2(Path(info.location) / "lorastack.json", tmp / "lorastack.json")
        (tmp / "lorastack-bake.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        _fsync_tree(tmp)  # the files are on disk before the folder is renamed in (a power cut, not just a kill)
        crash_point("bake.folder-written")
        if output.is_dir() and not any(output.iterdir()):
            output.rmdir()
        replace_folder(tmp, output, fsync_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def bake_lora(stack, scales, sources: list[Source], rank: int | None):
    """The active stack as one adapter: ``concat`` (exact), or ``svd`` at ``rank``."""
    from .merge import merge

    weights = {}
    for name in scales:
        for m in stack.get(name).layers:
            weights[m] = stack.index.get(m).weight.detach()
    dora = any(layer.is_dora for s in sources for layer in s.adapter.layers.values())
    return merge(sources, "svd" if rank else "concat", rank=rank, base_weights=weights if dora else None)
