"""A1111's infotext (the ``parameters`` PNG text chunk): written for every image lorastack makes, and read back
from images other tools made.

The grammar is A1111's own (``modules/infotext_utils.py``): prompt lines, then an optional ``Negative prompt:``
section, then one last line of ``Key: value`` pairs separated by commas, where a value holding a comma, a colon or a
newline is a JSON string. The last line counts as settings only when at least three pairs are found in it; otherwise
it is part of the prompt. ``Size: WxH`` becomes ``Size-1`` and ``Size-2``.

Adapters appear twice, as A1111 writes them: ``<lora:ALIAS:WEIGHT>`` tags in the prompt and
``Lora hashes: "ALIAS: HASH, …"`` among the settings, where ``HASH`` is A1111's short hash of the file: the first
12 hex digits of its tensor-data sha256 (``sshs_model_hash``, the "addnet" hash; Civitai's AutoV3). Aliases lose
``:`` and ``,`` (A1111 drops them too), so the tag and the hash pair up again when read back.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

from .errors import RecipeError

#: The largest infotext read (A1111's own are a few kB; a prompt is at most 100 000 characters in lorastack).
MAX_INFOTEXT_CHARS = 300_000
MAX_PAIRS = 500

# A1111's pattern for one ``Key: value`` pair of the settings line (a quoted value may hold commas and colons).
PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
SIZE = re.compile(r"^(\d{1,6})x(\d{1,6})$")

#: lorastack's scheduler names as A1111 calls the same samplers (its ``Sampler:`` values).
SAMPLER_NAMES = {
    "ddim": "DDIM",
    "ddpm": "DDPM",
    "pndm": "PLMS",
    "euler": "Euler",
    "euler_a": "Euler a",
    "heun": "Heun",
    "dpm++2m": "DPM++ 2M",
    "dpm++2m_karras": "DPM++ 2M Karras",
    "unipc": "UniPC",
    "flow_euler": "Euler",
    "flow_heun": "Heun",
}
#: A base's own scheduler (``default:CLASS``) by the A1111 sampler it is.
_CLASS_SAMPLERS = {
    "DDIMScheduler": "DDIM",
    "DDPMScheduler": "DDPM",
    "PNDMScheduler": "PLMS",
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "HeunDiscreteScheduler": "Heun",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "UniPCMultistepScheduler": "UniPC",
    "FlowMatchEulerDiscreteScheduler": "Euler",
    "FlowMatchHeunDiscreteScheduler": "Heun",
}


def quote(text: Any) -> str:
    """A1111's quoting: a value with a comma, colon or newline becomes a JSON string."""
    text = str(text)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def alias(name: str) -> str:
    """An adapter name as a ``<lora:…>`` tag and ``Lora hashes`` entry can hold it (no ``:``, ``,``, ``<``, ``>``)."""
    cleaned = re.sub(r"[:,<>\n\r]", "", name).strip()
    return cleaned or "adapter"


def sampler_name(scheduler: str) -> str:
    """The A1111 sampler a lorastack scheduler name (or ``default:CLASS``) is; the class name when none is."""
    if scheduler.startswith("default:"):
        return _CLASS_SAMPLERS.get(scheduler[8:], scheduler[8:])
    return SAMPLER_NAMES.get(scheduler, scheduler)


def scheduler_for(sampler: str | None, schedule: str | None = None, flow: bool = False) -> str | None:
    """The lorastack scheduler for an A1111 sampler (and newer A1111's ``Schedule type``); None when unknown."""
    if not sampler:
        return None
    text = sampler.strip().lower()
    if schedule and schedule.strip().lower() == "karras" and not text.endswith("karras"):
        text += " karras"
    for name, a1111 in SAMPLER_NAMES.items():
        if a1111.lower() == text and name.startswith("flow_") == flow:
            return name
    for name, a1111 in SAMPLER_NAMES.items():
        if a1111.lower() == text:
            return name
    return None


def _weight(scale: Any) -> str:
    """A scale as A1111's tag weights: ``0.8``, or ``TE:UNET`` for a dict by component (blocks read as 1)."""
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        return f"{scale:g}"
    if not isinstance(scale, dict):
        return "1"
    factor = scale.get("scale", 1) if isinstance(scale.get("scale", 1), (int, float)) else 1
    te = next((v for k, v in scale.items() if k.startswith("text_encoder") and isinstance(v, (int, float))), 1)
    unet = next((scale[k] for k in ("unet", "transformer") if isinstance(scale.get(k), (int, float))), 1)
    te, unet = te * factor, unet * factor
    return f"{te:g}" if te == unet else f"{te:g}:{unet:g}"


def write_infotext(recipe: dict[str, Any], model_hash: str) -> str:
    """The recipe in A1111's infotext form (``model_hash``: the base's first 10 hex digits, A1111's short hash)."""
    from lorastack import __version__

    base = recipe["base"]
    settings = [
        ("Steps", recipe["steps"]),
        ("Sampler", sampler_name(recipe["scheduler"])),
        ("CFG scale", f"{recipe['guidance']:g}"),
        ("Seed", recipe["seed"]),
        ("Size", f"{recipe['width']}x{recipe['height']}"),
        ("Model hash", model_hash),
        ("Model", Path(base.get("source") or base["location"]).stem),
    ]
    if recipe.get("strength") is not None:
        settings.append(("Denoising strength", f"{recipe['strength']:g}"))
    tags, hashes = [], []
    for adapter in recipe["adapters"]:
        name = alias(adapter["name"])
        tags.append(f"<lora:{name}:{_weight(adapter.get('scale', 1.0))}>")
        if adapter.get("tensor_sha256"):
            hashes.append(f"{name}: {adapter['tensor_sha256'][:12]}")
    if hashes:
        settings.append(("Lora hashes", ", ".join(hashes)))
    settings.append(("Version", f"lorastack {__version__}"))
    text = " ".join([recipe["prompt"], *tags]) if tags else recipe["prompt"]
    if recipe.get("negative_prompt"):
        text += f"\nNegative prompt: {recipe['negative_prompt']}"
    return text + "\n" + ", ".join(f"{key}: {quote(value)}" for key, value in settings)


def parse_infotext(text: str, where: str | Path = "infotext") -> dict[str, str]:
    """A1111's ``parse_generation_parameters``: ``{"Prompt", "Negative prompt", key: value…}`` (values as text).

    Bounded: :class:`RecipeError` for a text over :data:`MAX_INFOTEXT_CHARS` or with over :data:`MAX_PAIRS` pairs.
    """
    if not isinstance(text, str):
        raise RecipeError(f"{where}: its parameters text is not text")
    if len(text) > MAX_INFOTEXT_CHARS:
        raise RecipeError(
            f"{where}: its parameters text is {len(text)} characters; at most {MAX_INFOTEXT_CHARS} are read"
        )
    *lines, last = text.strip().split("\n")
    pairs = PAIR.findall(last)
    if len(pairs) < 3:
        lines.append(last)
        pairs = []
    if len(pairs) > MAX_PAIRS:
        raise RecipeError(f"{where}: its parameters text has {len(pairs)} settings; at most {MAX_PAIRS} are read")
    prompt: list[str] = []
    negative: list[str] = []
    done_with_prompt = False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        (negative if done_with_prompt else prompt).append(line)
    result = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in pairs:
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            with contextlib.suppress(ValueError):  # A1111 keeps such a value as it stands too
                value = json.loads(value)
            if not isinstance(value, str):
                value = str(value)
        size = SIZE.match(value)
        if size is not None:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value
    return result


def parse_lora_hashes(value: str) -> dict[str, str]:
    """``"a: 0123456789ab, b: …"`` → ``{alias: hash}``; entries that are not ``alias: hex`` are skipped."""
    found: dict[str, str] = {}
    for entry in value.split(",")[:MAX_PAIRS]:
        name, sep, digest = entry.rpartition(":")
        digest = digest.strip().lower()
        if sep and name.strip() and re.fullmatch(r"[0-9a-f]{8,64}", digest):
            found[name.strip()] = digest
    return found
