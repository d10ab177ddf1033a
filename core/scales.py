"""Scale specifications: how strongly each layer of an adapter applies.

A scale is one of

* a number: every layer at that strength;
* a dict in diffusers' ``set_adapters`` shape, by component and UNet block::

      {"unet": {"down": 0.9, "mid": 1.0, "up": {"block_0": 0.6, "block_1": [0.4, 0.8, 1.0]}},
       "text_encoder": 0.5}

  Components left out keep 1.0 (as in diffusers). A block's number covers everything in the block (attention,
  resnets, sampler); a list gives one value per layer index, and the block's sampler takes the last one.
* a dict with ``"lbw"``: A1111 *LoRA Block Weight* values, 17 or 26 numbers for SD 1.x/2.x, 12 or 20 for SDXL
  (``BASE`` scales the text encoders, ``INxx``/``MID``/``OUTxx`` the UNet's original blocks);

* for the transformer families (Flux, SD3), a dict by block group and block, with the names kohya uses::

      {"transformer": {"scale": 0.8, "single": 0.0, "double.3": 0.5}, "text_encoder": 0.5}

  ``double``/``single`` (Flux) and ``joint`` (SD3) cover a whole group, ``double.3`` one block (it wins over its
  group), ``"scale"`` multiplies everything in the transformer (modules outside every block included); a group may
  also take a list with one value per block. Block indices are checked against the loaded model's counts;

and a dict may carry ``"scale"``, a multiplier over everything. A number for a component the base lacks is
ignored (a prompt tag's ``te=`` covers one text encoder or three); blocks asked of a base without them are refused.

Every number must be finite and within ±``MAX_SCALE``: LoRAs are made to apply at about -2…2 (block weights and
merges rarely leave -10…10), so a larger value is a typo or an attack, and it would push the patched weights
(``W₀ + s·ΔW``) towards the fp16 limit (65504) and the images to NaN.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Callable, Mapping
from typing import Any

from lorastack.adapters.families import FAMILY_TABLE, transformer_block
from lorastack.adapters.naming import COMPONENTS, diffusers_to_sgm

from .errors import ScaleError

#: The largest strength (either sign) of any number in a scale specification; see the module docstring.
MAX_SCALE = 100.0
SCALE_RANGE = f"scales are finite numbers from {-MAX_SCALE:g} to {MAX_SCALE:g}"

#: What reads as a scale where a name could also stand (``--lora style:v2:0.8``, ``<lora:me/style:v1:0.8>``): a
#: decimal number, and NaN and infinities (refused with a reason instead of being taken for part of a name).
SCALE_TEXT = re.compile(r"[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|nan|inf|infinity)", re.IGNORECASE)

SPEC_KEYS = ("scale", *COMPONENTS, "lbw")
BLOCK_KEYS = ("down", "mid", "up")
TEXT_COMPONENTS = tuple(c for c in COMPONENTS if c.startswith("text_encoder"))
_GROUP_KEY = re.compile(r"^([a-z]{1,20})(?:\.(\d{1,6}))?$")  # bounded: an index past int()'s digit limit crashes

_IN_OUT_SD = [f"IN{i:02d}" for i in (1, 2, 4, 5, 7, 8)] + ["MID"] + [f"OUT{i:02d}" for i in range(3, 12)]
_IN_OUT_XL = [f"IN{i:02d}" for i in (4, 5, 7, 8)] + ["MID"] + [f"OUT{i:02d}" for i in range(6)]
LBW_LAYOUTS = {
    ("sd", 17): ["BASE", *_IN_OUT_SD],
    ("sd", 26): ["BASE", *[f"IN{i:02d}" for i in range(12)], "MID", *[f"OUT{i:02d}" for i in range(12)]],
    ("sdxl", 12): ["BASE", *_IN_OUT_XL],
    ("sdxl", 20): ["BASE", *[f"IN{i:02d}" for i in range(9)], "MID", *[f"OUT{i:02d}" for i in range(9)]],
}

_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(attentions|resnets|downsamplers|upsamplers)\.(\d+)")


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxdict, _BRIEF.maxlist, _BRIEF.maxtuple = 2, 4, 4, 4
_BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxlong = 60, 60, 40


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8 (no lone surrogates, which undecodable bytes become)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def brief(value: Any) -> str:
    """A short ``repr`` for messages: long strings, deep or long containers and huge integers are cut."""
    try:
        text = _BRIEF.repr(value)
    except (ValueError, RecursionError):  # an integer past Python's int-to-str digit limit; a cycle
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def check_scale(value: Any, where: str) -> float:
    """``value`` as a float, or a :class:`ScaleError` saying why it is no scale (type, NaN/inf, > ``MAX_SCALE``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScaleError(f"{where}: {brief(value)} is not a number; {SCALE_RANGE}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ScaleError(f"{where}: {value} is not a finite number; {SCALE_RANGE}")
    if abs(value) > MAX_SCALE:
        raise ScaleError(f"{where}: {brief(value)} is out of range; {SCALE_RANGE}")
    return float(value)


_number = check_scale


def _keys(keys: list) -> str:
    return brief(", ".join(str(k) for k in keys[:10]) + (", …" if len(keys) > 10 else "")).strip("'\"")


def parse_lbw(value: Any, family: str) -> dict[str, float]:
    """Block-weight values (a list, or a comma-separated string) → ``{"BASE": …, "IN01": …}``."""
    if isinstance(value, str):
        if len(value) > 2000:
            raise ScaleError(f"lbw: {brief(value)} is {len(value)} characters; block weights are at most 26 numbers")
        try:
            value = [float(v) for v in value.split(",")]
        except ValueError:
            raise ScaleError(f"lbw: {brief(value)} is not a comma-separated list of numbers") from None
    if not isinstance(value, (list, tuple)):
        raise ScaleError(f"lbw: expected a list of numbers, got {brief(value)}")
    numbers = [_number(v, "lbw") for v in value]
    if block_groups(family):
        names = ", ".join(block_groups(family))
        raise ScaleError(f"lbw block weights are for SD 1.x/2.x and SDXL bases; for this one name blocks ({names})")
    kind = "sdxl" if family == "sdxl" else "sd"
    layout = LBW_LAYOUTS.get((kind, len(numbers)))
    if layout is None:
        sizes = " or ".join(str(n) for k, n in LBW_LAYOUTS if k == kind)
        raise ScaleError(f"lbw: {len(numbers)} values, but {family} block weights take {sizes}")
    return dict(zip(layout, numbers))


def _lbw_block(path: str) -> str | None:
    sgm = diffusers_to_sgm(path)
    if sgm is None:
        return None
    parts = sgm.split(".")
    if parts[0] == "input_blocks":
        return f"IN{int(parts[1]):02d}"
    if parts[0] == "output_blocks":
        return f"OUT{int(parts[1]):02d}"
    if parts[0] == "middle_block":
        return "MID"
    return None


def _block_factor(blocks: Mapping[str, Any], path: str) -> float:
    """Factor from a diffusers-style ``{"down": …, "mid": …, "up": …}`` dict for a UNet module path."""
    if path.startswith("mid_block."):
        return _number(blocks.get("mid", 1.0), "unet.mid")
    m = _BLOCK.match(path)
    if m is None:
        return 1.0  # conv_in, time embedding, conv_out: outside every block
    part = "down" if m.group(1) == "down_blocks" else "up"
    value = blocks.get(part, 1.0)
    if not isinstance(value, Mapping):
        return _number(value, f"unet.{part}")
    block, kind, index = int(m.group(2)), m.group(3), int(m.group(4))
    entry = value.get(f"block_{block}", 1.0)
    if isinstance(entry, (list, tuple)):
        if not entry:
            raise ScaleError(f"unet.{part}.block_{block}: an empty list")
        if kind in ("downsamplers", "upsamplers"):
            return _number(entry[-1], f"unet.{part}.block_{block}")
        if index >= len(entry):
            raise ScaleError(
                f"unet.{part}.block_{block}: {len(entry)} values, but the block has a layer {index}; "
                "give one per layer"
            )
        return _number(entry[index], f"unet.{part}.block_{block}[{index}]")
    return _number(entry, f"unet.{part}.block_{block}")


def validate_spec(spec: Any, family: str) -> None:
    """Raise :class:`ScaleError` for a specification that cannot be applied."""
    compile_scale(spec, family)


def block_groups(family: str) -> tuple[str, ...]:
    """The block group names a family's transformer scales take (``("double", "single")`` for Flux)."""
    fam = FAMILY_TABLE.get(family)
    return tuple(g.name for g in fam.blocks) if fam is not None else ()


def _transformer_factor(spec: Mapping[str, Any], family: str, counts: Mapping[str, int] | None):
    """Check a transformer block dict; return ``path → factor`` for the transformer's module paths."""
    groups = block_groups(family)
    label = FAMILY_TABLE[family].label if family in FAMILY_TABLE else family
    if not groups:
        raise ScaleError(
            f"transformer block scales ({_keys(list(spec))}) need a Flux or SD3 base; this base is {label}"
        )
    overall = 1.0
    by_group: dict[str, Any] = {}
    by_block: dict[tuple[str, int], float] = {}
    for key, value in spec.items():
        m = _GROUP_KEY.match(str(key)) if isinstance(key, str) else None
        if key == "scale":
            overall = _number(value, "transformer.scale")
            continue
        if m is None or m.group(1) not in groups:
            valid = ", ".join([*groups, *(f"{g}.N" for g in groups), "scale"])
            raise ScaleError(f"unknown transformer block key {brief(key)} for {label}; valid keys: {valid}")
        group, index = m.group(1), m.group(2)
        count = counts.get(group) if counts else None
        if index is not None:
            if count is not None and int(index) >= count:
                raise ScaleError(
                    f"transformer.{key}: this base has {count} {group} blocks ({group}.0–{group}.{count - 1})"
                )
            by_block[(group, int(index))] = _number(value, f"transformer.{key}")
        elif isinstance(value, (list, tuple)):
            if count is not None and len(value) != count:
                raise ScaleError(
                    f"transformer.{group}: {len(value)} values, but this base has {count} {group} blocks; "
                    "give one per block"
                )
            by_group[group] = [_number(v, f"transformer.{group}[{i}]") for i, v in enumerate(value)]
        else:
            by_group[group] = _number(value, f"transformer.{group}")

    def factor(path: str) -> float:
        found = transformer_block(family, path)
        if found is None:
            return overall
        group, index = found
        if (group, index) in by_block:
            return overall * by_block[found]
        value = by_group.get(group, 1.0)
        if isinstance(value, list):
            if index >= len(value):
                raise ScaleError(f"transformer.{group}: {len(value)} values, but the adapter has {group}.{index}")
            return overall * value[index]
        return overall * value

    return factor


def asked_blocks(spec: Any) -> set[str]:
    """The block keys (``double``, ``single.3``) a scale specification names for the transformer."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("transformer"), Mapping):
        return set()
    return {str(k) for k in spec["transformer"] if k != "scale"}


def compile_scale(spec: Any, family: str, counts: Mapping[str, int] | None = None) -> Callable[[str], float]:
    """A function from canonical module name to strength, for one adapter's scale specification.

    ``counts``: the base's number of blocks per transformer group (``{"double": 19, "single": 38}``), for checking
    block indices; without it any index is taken.
    """
    if not isinstance(spec, Mapping):
        value = _number(spec, "scale")
        return lambda name: value
    unknown = sorted((k for k in spec if k not in SPEC_KEYS), key=str)
    if unknown:
        raise ScaleError(f"unknown scale key(s) {_keys(unknown)}; valid keys: {', '.join(SPEC_KEYS)}")
    overall = _number(spec.get("scale", 1.0), "scale")
    components = {c: spec.get(c, 1.0) for c in COMPONENTS}
    for component in TEXT_COMPONENTS:
        _number(components[component], component)
    transformer = components["transformer"]
    if isinstance(transformer, Mapping):
        transformer_factor = _transformer_factor(transformer, family, counts)
    else:
        number = _number(transformer, "transformer")
        transformer_factor = lambda path: number  # noqa: E731
    unet = components["unet"]
    if isinstance(unet, Mapping) and block_groups(family):
        raise ScaleError(
            f"unet block scales (down/mid/up) are for UNet bases; this base's transformer takes block names "
            f"({', '.join(block_groups(family))}): {{'transformer': {{...}}}}"
        )
    if isinstance(unet, Mapping):
        bad = sorted((k for k in unet if k not in BLOCK_KEYS), key=str)
        if bad:
            raise ScaleError(f"unknown unet block key(s) {_keys(bad)}; valid keys: {', '.join(BLOCK_KEYS)}")
        for part in ("down", "up"):
            value = unet.get(part)
            if isinstance(value, Mapping):
                bad = [k for k in value if not re.fullmatch(r"block_\d+", str(k))]
                if bad:
                    raise ScaleError(f"unet.{part}: keys must look like block_0, block_1, …; got {_keys(bad)}")
    else:
        _number(unet, "unet")
    lbw = parse_lbw(spec["lbw"], family) if "lbw" in spec else None
    if lbw is not None and isinstance(unet, Mapping):
        raise ScaleError("give either per-block unet scales or lbw block weights, not both")

    def scale(name: str) -> float:
        component, _, path = name.partition(".")
        if component == "transformer":
            return overall * transformer_factor(path)
        if component != "unet":
            factor = lbw["BASE"] if lbw else 1.0
            return overall * float(components[component]) * factor
        if isinstance(unet, Mapping):
            return overall * _block_factor(unet, path)
        factor = 1.0
        if lbw is not None:
            block = _lbw_block(path)
            factor = lbw.get(block, 1.0) if block else 1.0
        return overall * float(unet) * factor

    if isinstance(unet, Mapping):  # check every value once, not only the ones an adapter happens to touch
        for part in ("down", "up"):
            value = unet.get(part)
            if isinstance(value, Mapping):
                for key, entry in value.items():
                    if isinstance(entry, (list, tuple)) and not entry:
                        raise ScaleError(f"unet.{part}.{key}: an empty list; give one value per layer")
                    for v in entry if isinstance(entry, (list, tuple)) else [entry]:
                        _number(v, f"unet.{part}.{key}")
            elif value is not None:
                _number(value, f"unet.{part}")
        _number(unet.get("mid", 1.0), "unet.mid")
    return scale
