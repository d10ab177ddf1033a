"""A1111-style adapter tags in prompts: ``<lora:name:0.8>``.

Accepted forms (``lyco`` works as well as ``lora``)::

    <lora:name>                 strength 1
    <lora:name:0.8>             one strength for everything
    <lora:name:0.6:0.9>         text encoders at 0.6, UNet at 0.9 (A1111's te/unet order)
    <lora:name:0.8:lbw=1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1>
    <lora:name:te=0.5:unet=1>   named values
    <lora:name:0.8:single=0>    a transformer base (Flux, SD3): whole block groups (double, single, joint) or
    <lora:name:double.3=0.5>    single blocks, times the denoiser's strength; te covers every text encoder
    <lora:me/style:v1:0.8>      a registry reference (``name:tag``, ``name@N``) is a name too

The name runs up to the first part that is a number or ``key=value``, so a registry tag's colon stays in the name.

Tags are removed from the prompt; the text around them is kept, with whitespace and stray commas tidied.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import ScaleError
from .scales import SCALE_RANGE, SCALE_TEXT, brief, check_scale

# A tag's body holds no '<': a tag inside a tag is refused as unclosed, and matching stays linear in the prompt.
TAG = re.compile(r"<(lora|lyco):([^<>]*)>", re.IGNORECASE)


#: Transformer block keys in tags and ``--lora`` (every family's groups; the base's own are checked when applied).
BLOCK_KEY = re.compile(r"^(double|single|joint)(\.\d{1,4})?$")
TAG_KEYS = "te, unet, transformer, lbw, double, single, joint (or double.N, single.N, joint.N)"


def _show(tag: str) -> str:
    return tag if len(tag) <= 80 else tag[:70] + "…>"


def _number(text: str, tag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ScaleError(f"prompt tag {_show(tag)}: {brief(text)} is not a number; {SCALE_RANGE}") from None
    try:
        return check_scale(value, f"prompt tag {_show(tag)}")
    except ScaleError:
        problem = "is out of range" if math.isfinite(value) else "is not a finite number"
        raise ScaleError(f"prompt tag {_show(tag)}: {brief(text)} {problem}; {SCALE_RANGE}") from None


def parse_tag(body: str, tag: str) -> tuple[str, Any]:
    """``name:0.8`` → ``("name", 0.8)``; richer forms give a scale dict."""
    parts = body.split(":")
    cut = 1
    while cut < len(parts) and "=" not in parts[cut] and not SCALE_TEXT.fullmatch(parts[cut].strip()):
        cut += 1  # "me/style:v1": a registry tag, part of the name
    name = ":".join(parts[:cut]).strip()
    if not name:
        raise ScaleError(f"prompt tag {_show(tag)} names no adapter")
    positional: list[float] = []
    named: dict[str, Any] = {}
    for part in parts[cut:]:
        part = part.strip()
        if "=" in part:
            key, _, value = part.partition("=")
            key = key.strip().lower()
            if key == "lbw":
                named["lbw"] = value.strip()
                for number in named["lbw"].split(","):  # the count depends on the base: checked when applied
                    _number(number.strip(), tag)
            elif key in ("te", "unet", "transformer"):
                named["unet" if key == "transformer" else key] = _number(value.strip(), tag)
            elif BLOCK_KEY.match(key):
                named.setdefault("blocks", {})[key] = _number(value.strip(), tag)
            else:
                raise ScaleError(f"prompt tag {_show(tag)}: unknown key {brief(key)}; valid keys: {TAG_KEYS}")
        else:
            positional.append(_number(part, tag))
    if len(positional) > 2:
        raise ScaleError(f"prompt tag {_show(tag)}: at most two numbers (text encoder, UNet)")
    if not named and len(positional) <= 1:
        return name, positional[0] if positional else 1.0
    te = named.get("te", positional[0] if positional else 1.0)
    unet = named.get("unet", positional[1] if len(positional) > 1 else (positional[0] if positional else 1.0))
    spec: dict[str, Any] = {"unet": unet, "transformer": unet, "text_encoder": te, "text_encoder_2": te,
                            "text_encoder_3": te}  # fmt: skip
    if "blocks" in named:
        spec["transformer"] = {"scale": unet, **named["blocks"]}
    if "lbw" in named:
        spec["lbw"] = named["lbw"]
    return name, spec


def is_scale_part(part: str) -> bool:
    """Whether one ``:``-separated part of a tag or ``--lora`` value is a scale (a number or ``key=value``)."""
    part = part.strip()
    if SCALE_TEXT.fullmatch(part):
        return True
    key, sep, _ = part.partition("=")
    key = key.strip().lower()
    return bool(sep) and (key in ("te", "unet", "transformer", "lbw") or bool(BLOCK_KEY.match(key)))


def misread_scale(name: str, reason: object) -> ScaleError | None:
    """For a tag name no adapter has (``reason`` says why): when it holds a colon, the error for both readings.

    ``<lora:style:loud>`` reads as the name ``style:loud`` (a registry tag may follow a colon), but ``loud`` may
    have been meant as the scale of ``style``.
    """
    _, sep, tail = name.rpartition(":")
    if not sep:
        return None
    return ScaleError(
        f"prompt tag <lora:{_show(name)}>: {brief(tail)} is not a number ({SCALE_RANGE}), "
        f"and no adapter is named {brief(name)} ({reason})"
    )


def extract_tags(prompt: str) -> tuple[str, dict[str, Any]]:
    """The prompt without its adapter tags, and ``{name: scale}`` for the tags (a later tag wins)."""
    found: dict[str, Any] = {}
    for match in TAG.finditer(prompt):
        name, spec = parse_tag(match.group(2), match.group(0))
        found[name] = spec
    rest = TAG.sub("", prompt).lower()
    if "<lora:" in rest or "<lyco:" in rest:
        raise ScaleError("a <lora:…> tag in the prompt is not closed with '>' (or holds another tag)")
    clean = TAG.sub(" ", prompt)
    clean = re.sub(r"\s*,\s*(,\s*)+", ", ", clean)  # "a, <lora:x>, b" leaves a double comma
    clean = re.sub(r"\s+", " ", clean).strip(" ,")
    return clean, found


def add_trigger_words(prompt: str, words: list[str]) -> str:
    """Append trigger words the prompt does not already contain."""
    missing: list[str] = []
    for word in words:
        if word.lower() not in prompt.lower() and word.lower() not in (m.lower() for m in missing):
            missing.append(word)
    return ", ".join([prompt, *missing]) if prompt else ", ".join(missing)
