"""Image and text encoders for the built-in evaluators: CLIP and DINO from transformers, loaded once per process.

Models load with ``local_files_only=True``: from a folder saved with ``save_pretrained``, or from the Hugging Face
cache for a Hub id; an evaluation never downloads. A model that is not there is one ``EvaluationError`` line naming
the option that chooses it. Written for the built-in evaluators only (a private helper, importing only
``lorastack.plugins.api`` from lorastack).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lorastack.plugins.api import EvaluationError, PluginOptionError, best_device

#: (kind, model, device) → (model, processor): what one process has loaded
_CACHE: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_LOCK = threading.Lock()
#: how many times each (kind, model, device) was loaded from its files (the cache's tests read it)
LOADS: dict[tuple[str, str, str], int] = {}
MAX_BATCH = 256


def choose_device(option: str | None, host: str) -> str:
    """The device to encode on: the evaluator's ``device`` option (``auto``: cuda, else mps, else cpu) or, when
    none is given, the host's (the device the images were generated on)."""
    import torch

    name = (option or host or "auto").strip().lower()
    if name == "auto":
        name = best_device()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise PluginOptionError(f"--device {option!r} is not a device (auto, cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PluginOptionError(f"device {name!r}: this machine has no CUDA device; use cpu or auto")
    return str(device)


def load(kind: str, model: str, device: str, owner: str, flag: str) -> tuple[Any, Any]:
    """The ``kind`` (``clip`` or ``dino``) model and its processor, on ``device``, in eval mode; cached."""
    key = (kind, str(model), device)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(kind, str(model), device, owner, flag)
            LOADS[key] = LOADS.get(key, 0) + 1
        return _CACHE[key]


def _load(kind: str, model: str, device: str, owner: str, flag: str) -> tuple[Any, Any]:
    from transformers import AutoImageProcessor, AutoModel, CLIPModel, CLIPProcessor

    path = Path(model).expanduser()
    looks_like_path = model.startswith(("/", ".", "~")) or model.count("/") > 1 or path.exists()
    if looks_like_path and not path.is_dir():
        what = "is a file, not a folder saved with save_pretrained" if path.exists() else "is not a folder"
        raise EvaluationError(f"{owner}: {flag} {model!r} {what}; pass {flag} DIR with a {kind.upper()} model")
    source = str(path) if looks_like_path else model
    try:
        if kind == "clip":
            loaded = CLIPModel.from_pretrained(source, local_files_only=True)
            processor = CLIPProcessor.from_pretrained(source, local_files_only=True)
        else:
            loaded = AutoModel.from_pretrained(source, local_files_only=True)
            processor = AutoImageProcessor.from_pretrained(source, local_files_only=True)
    except Exception as e:  # transformers raises OSError, ValueError, … for missing or foreign files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        where = "in that folder" if looks_like_path else "in the Hugging Face cache (evaluations never download)"
        raise EvaluationError(
            f"{owner}: no {kind.upper()} model {model!r} {where} ({first}); pass {flag} DIR with a model saved by "
            "save_pretrained, or download it first (huggingface-cli download)"
        ) from None
    if kind == "clip" and loaded.config.model_type != "clip":
        raise EvaluationError(f"{owner}: {flag} {model!r} holds a {loaded.config.model_type!r} model, not CLIP")
    return loaded.to(device).eval(), processor


def _features(output: Any):
    """transformers 4 returns the projected features as a tensor, 5 may wrap them in a model output."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    raise EvaluationError("the CLIP model returned no features")


def image_embeddings(kind: str, loaded: tuple[Any, Any], images: Sequence[Any], device: str, batch_size: int):
    """Unit-length embeddings of ``images`` (a float32 CPU tensor, one row each), ``batch_size`` at a time.

    CLIP: the projected image features; DINO: the class token of the last layer (what DreamBooth's DINO metric
    compares)."""
    import torch

    model, processor = loaded
    rows = []
    size = max(1, min(int(batch_size), MAX_BATCH))
    for start in range(0, len(images), size):
        batch = [image.convert("RGB") for image in images[start : start + size]]
        pixels = processor(images=batch, return_tensors="pt")["pixel_values"].to(device, model.dtype)
        with torch.no_grad():
            if kind == "clip":
                features = _features(model.get_image_features(pixel_values=pixels))
            else:
                features = model(pixel_values=pixels).last_hidden_state[:, 0]
        rows.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
    if not rows:
        return torch.zeros(0, 1)
    return torch.cat(rows)


def text_embeddings(loaded: tuple[Any, Any], texts: Sequence[str], device: str, batch_size: int):
    """Unit-length CLIP text features of ``texts`` (cut to the model's 77 tokens)."""
    import torch

    model, processor = loaded
    rows = []
    size = max(1, min(int(batch_size), MAX_BATCH))
    length = min(77, getattr(model.config.text_config, "max_position_embeddings", 77))
    for start in range(0, len(texts), size):
        tokens = processor.tokenizer(list(texts[start : start + size]), padding=True, truncation=True,
                                     max_length=length, return_tensors="pt")  # fmt: skip
        tokens = {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            features = _features(model.get_text_features(**tokens))
        rows.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
    return torch.cat(rows) if rows else torch.zeros(0, 1)
