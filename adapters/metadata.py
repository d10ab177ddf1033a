"""Adapter metadata: what the safetensors header says about an adapter, in one structure.

Three vocabularies are read and written:

* ``modelspec.*`` — Stability's ModelSpec (title, architecture, trigger phrase, resolution, author, …);
* ``ss_*`` — kohya sd-scripts' training record (network dim/alpha, base model, steps, dataset, tag counts, …);
* ``lora_adapter_metadata`` — diffusers' JSON of the peft ``LoraConfig`` per component (rank, alpha, targets).

Keys lorastack does not interpret are kept verbatim in :attr:`AdapterMetadata.raw` and written back out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidAdapterError, shown

LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"
#: Longest header value parsed as JSON (a kohya tag list or a peft config of thousands of modules is well under).
MAX_JSON_VALUE = 8 << 20
MODELSPEC_PREFIX = "modelspec."
KOHYA_PREFIX = "ss_"
#: Header keys derived from the tensors of one particular file; stale once tensors are re-encoded.
FILE_SPECIFIC_KEYS = frozenset({"sshs_model_hash", "sshs_legacy_hash", "modelspec.hash_sha256", "format"})

#: ModelSpec architecture ids per family (the ``/lora`` suffix is added for adapters).
MODELSPEC_ARCHITECTURES = {
    "sd1": "stable-diffusion-v1",
    "sd2": "stable-diffusion-v2-768-v",
    "sdxl": "stable-diffusion-xl-v1-base",
    "flux": "flux-1-dev",
    "sd3": "stable-diffusion-v3-medium",
}
#: kohya ``ss_base_model_version`` per family.
KOHYA_BASE_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "flux": "flux1", "sd3": "sd3"}
DEFAULT_RESOLUTIONS = {
    "sd1": "512x512",
    "sd2": "768x768",
    "sdxl": "1024x1024",
    "flux": "1024x1024",
    "sd3": "1024x1024",
}

# kohya training keys worth showing, by the name we show them under.
_TRAINING_KEYS = {
    "ss_output_name": "output_name",
    "ss_training_started_at": "started_at",
    "ss_max_train_steps": "max_train_steps",
    "ss_steps": "steps",
    "ss_epoch": "epoch",
    "ss_num_epochs": "num_epochs",
    "ss_num_train_images": "num_train_images",
    "ss_learning_rate": "learning_rate",
    "ss_unet_lr": "unet_lr",
    "ss_text_encoder_lr": "text_encoder_lr",
    "ss_lr_scheduler": "lr_scheduler",
    "ss_optimizer": "optimizer",
    "ss_mixed_precision": "mixed_precision",
    "ss_seed": "seed",
    "ss_clip_skip": "clip_skip",
    "ss_noise_offset": "noise_offset",
    "ss_min_snr_gamma": "min_snr_gamma",
    "ss_network_module": "network_module",
    "ss_network_dim": "network_dim",
    "ss_network_alpha": "network_alpha",
    "ss_network_args": "network_args",
    "ss_batch_size_per_device": "batch_size",
    "ss_gradient_accumulation_steps": "gradient_accumulation_steps",
    "ss_v2": "v2",
}


@dataclass
class AdapterMetadata:
    """What the header says about an adapter. Every field is optional; ``raw`` keeps the header verbatim."""

    title: str | None = None
    description: str | None = None
    trigger_words: list[str] = field(default_factory=list)
    base_model: str | None = None
    architecture: str | None = None
    resolution: str | None = None
    author: str | None = None
    license: str | None = None
    date: str | None = None
    tags: list[str] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    peft_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "description": self.description,
            "trigger_words": list(self.trigger_words),
            "base_model": self.base_model,
            "architecture": self.architecture,
            "resolution": self.resolution,
            "author": self.author,
            "license": self.license,
            "date": self.date,
            "tags": list(self.tags),
            "training": dict(self.training),
        }


def split_words(text: str | None) -> list[str]:
    """Split a trigger phrase / tag list on commas, dropping blanks and duplicates (order kept)."""
    if not text:
        return []
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if part and part not in out:
            out.append(part)
    return out


def parse_json_value(raw: str) -> tuple[Any, str | None]:
    """A header value parsed as JSON: ``(value, None)``, or ``(None, why not)``. Never raises: the text comes from
    a file (deep nesting, integers past Python's digit limit, megabytes of it)."""
    if len(raw) > MAX_JSON_VALUE:
        return None, f"is {len(raw):,} characters long; lorastack parses at most {MAX_JSON_VALUE:,}"
    try:
        return json.loads(raw), None
    except RecursionError:
        return None, "nests JSON arrays or objects too deeply"
    except ValueError as e:  # JSONDecodeError, or an integer over Python's 4300-digit limit
        return None, f"is not valid JSON ({e.__class__.__name__})"


def _flat_peft(raw: str | None) -> tuple[dict[str, dict[str, Any]], str | None]:
    """``lora_adapter_metadata`` split by component, and why it could not be read (``None`` when it could)."""
    if not raw:
        return {}, None
    flat, why = parse_json_value(raw)
    if why is None and not isinstance(flat, dict):
        why = f"is {shown(flat)}, not a JSON object"
    if why is not None:
        return {}, why
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        component, sep, name = str(key).partition(".")
        if not sep:  # saved by a single-model save_lora_adapter: no component prefix
            component, name = "", key
        out.setdefault(component, {})[name] = value
    return out, None


def parse_peft_metadata(raw: str | None) -> dict[str, dict[str, Any]]:
    """diffusers' ``lora_adapter_metadata`` JSON → ``{component: LoraConfig dict}``. Malformed JSON gives ``{}``
    (for display; :func:`peft_alpha_configs` is what the reader uses, and it refuses malformed metadata)."""
    return _flat_peft(raw)[0]


@dataclass(frozen=True)
class PeftAlphaConfig:
    """What decides the alpha of a peft layer: ``lora_alpha``, ``alpha_pattern`` (in order), rsLoRA."""

    lora_alpha: float | None
    alpha_pattern: dict[str, float]
    use_rslora: bool


def peft_alpha_configs(raw: str | None) -> dict[str, PeftAlphaConfig]:
    """The checked ``LoraConfig`` values that set alphas, per component (``""``: no component prefix).

    Every value lorastack interprets must have peft's type: an :class:`InvalidAdapterError` names the key, the value
    and what it must be. ``r`` and ``rank_pattern`` are checked too (ranks themselves come from the tensors).
    """
    flat, why = _flat_peft(raw)
    if why is not None:
        raise InvalidAdapterError(f"{LORA_ADAPTER_METADATA_KEY} {why}; it must be the JSON object diffusers writes")
    out = {}
    for component, config in flat.items():
        where = f"{LORA_ADAPTER_METADATA_KEY} {component + '.' if component else ''}"

        def bad(name: str, value: Any, expected: str, where: str = where) -> InvalidAdapterError:
            return InvalidAdapterError(f"{where}{name} is {shown(value)}; it must be {expected}")

        alpha = config.get("lora_alpha")
        if alpha is not None and _number(alpha) is None:
            raise bad("lora_alpha", alpha, "a finite number")
        pattern = config.get("alpha_pattern")
        if pattern is None:
            pattern = {}
        if not isinstance(pattern, dict):
            raise bad("alpha_pattern", pattern, "an object of module patterns to numbers")
        for key, value in pattern.items():
            if _number(value) is None:
                raise bad(f"alpha_pattern[{shown(key)}]", value, "a finite number")
        r = config.get("r")
        if r is not None and not _rank(r):
            raise bad("r", r, "an integer of at least 1")
        ranks = config.get("rank_pattern")
        if ranks is not None and not isinstance(ranks, dict):
            raise bad("rank_pattern", ranks, "an object of module patterns to integers")
        for key, value in (ranks or {}).items():
            if not _rank(value):
                raise bad(f"rank_pattern[{shown(key)}]", value, "an integer of at least 1")
        rslora = config.get("use_rslora")
        if rslora is not None and not isinstance(rslora, bool):
            raise bad("use_rslora", rslora, "true or false")
        out[component] = PeftAlphaConfig(
            None if alpha is None else _number(alpha), {k: _number(v) for k, v in pattern.items()}, bool(rslora)
        )
    return out


def _number(value: Any) -> float | None:
    """``value`` as a finite float when it is a JSON number (not a boolean), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _rank(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _tag_frequency_words(raw: str | None, limit: int = 0) -> list[str]:
    """Top tags from kohya's ``ss_tag_frequency`` (``{dataset: {tag: count}}``); shown only, so anything else in
    it is ignored rather than refused."""
    if not raw:
        return []
    data, why = parse_json_value(raw)
    counts: dict[str, int] = {}
    if why is None and isinstance(data, dict):
        for tags in data.values():
            if isinstance(tags, dict):
                for tag, n in tags.items():
                    if isinstance(n, int) and not isinstance(n, bool):
                        counts[tag.strip()] = counts.get(tag.strip(), 0) + n
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    return ranked[:limit] if limit else ranked


def parse_metadata(header: dict[str, str]) -> AdapterMetadata:
    """Read the header vocabularies into an :class:`AdapterMetadata`."""
    h = dict(header)
    ms = {k[len(MODELSPEC_PREFIX) :]: v for k, v in h.items() if k.startswith(MODELSPEC_PREFIX)}
    training = {name: h[key] for key, name in _TRAINING_KEYS.items() if h.get(key) not in (None, "", "None")}
    base_model = h.get("ss_sd_model_name") or None
    meta = AdapterMetadata(
        title=ms.get("title") or h.get("ss_output_name") or None,
        description=ms.get("description") or h.get("ss_training_comment") or None,
        trigger_words=split_words(ms.get("trigger_phrase")),
        base_model=base_model if base_model not in ("None", "") else None,
        architecture=ms.get("architecture"),
        resolution=ms.get("resolution") or _kohya_resolution(h.get("ss_resolution")),
        author=ms.get("author"),
        license=ms.get("license"),
        date=ms.get("date"),
        tags=split_words(ms.get("tags")),
        training=training,
        peft_config=parse_peft_metadata(h.get(LORA_ADAPTER_METADATA_KEY)),
        raw=h,
    )
    if "ss_tag_frequency" in h:
        meta.training["top_tags"] = _tag_frequency_words(h["ss_tag_frequency"], limit=10)
    return meta


def _kohya_resolution(value: str | None) -> str | None:
    """kohya writes ``ss_resolution`` as ``(512, 512)``; ModelSpec as ``512x512``."""
    if not value:
        return None
    nums = [p.strip() for p in value.strip("()[] ").split(",") if p.strip()]
    if len(nums) == 2 and all(n.isdigit() for n in nums):
        return f"{nums[0]}x{nums[1]}"
    return value


def build_header(
    meta: AdapterMetadata,
    *,
    family: str | None,
    rank: int | None,
    alpha: float | None,
    network_module: str,
    implementation: str,
) -> dict[str, str]:
    """The header lorastack writes: the original keys, refreshed ModelSpec and kohya keys, minus stale hashes."""
    header = {k: v for k, v in meta.raw.items() if k not in FILE_SPECIFIC_KEYS and k != LORA_ADAPTER_METADATA_KEY}
    arch = meta.architecture or (
        f"{MODELSPEC_ARCHITECTURES[family]}/lora" if family in MODELSPEC_ARCHITECTURES else None
    )
    modelspec = {
        "sai_model_spec": "1.0.1",
        "architecture": arch,
        "implementation": implementation,
        "title": meta.title or meta.raw.get("ss_output_name") or "LoRA",
        "description": meta.description,
        "trigger_phrase": ", ".join(meta.trigger_words) if meta.trigger_words else None,
        "resolution": meta.resolution or DEFAULT_RESOLUTIONS.get(family or ""),
        "author": meta.author,
        "license": meta.license,
        "date": meta.date,
        "tags": ", ".join(meta.tags) if meta.tags else None,
    }
    for key, value in modelspec.items():
        if value is not None:
            header[MODELSPEC_PREFIX + key] = str(value)
    header.setdefault("ss_network_module", network_module)
    if rank is not None:
        header["ss_network_dim"] = str(rank)
    if alpha is not None:
        header["ss_network_alpha"] = _num(alpha)
    if family in KOHYA_BASE_VERSIONS:
        header.setdefault("ss_base_model_version", KOHYA_BASE_VERSIONS[family])
        header.setdefault("ss_v2", str(family == "sd2"))
    if meta.base_model:
        header["ss_sd_model_name"] = meta.base_model
    return header


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
