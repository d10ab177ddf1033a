"""Recipes from images other tools made (and lorastack's own): what ``lorastack recipe import`` prints and
``lorastack reproduce`` makes again.

Three sources, tried in this order: lorastack's ``lorastack`` chunk (the full recipe), A1111's ``parameters``
infotext (:mod:`lorastack.core.infotext`), and ComfyUI's ``prompt`` (API graph) or ``workflow`` (UI graph) JSON
chunks (:mod:`lorastack.core.comfyui`). Adapters are resolved in the registry by the hashes the image records
(full sha256, A1111's 12-hex short hash, AutoV2), else (ComfyUI records no hashes) by file name; the ones not
found are listed with the hash to look for.

Everything in an image is untrusted: every text chunk is bounded, every value's type and range checked, and a bad
one is a one-line :class:`RecipeError` naming the image and the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LorastackError, RecipeError
from .scales import MAX_SCALE, brief

#: A text chunk larger than this is not read (ComfyUI workflows of a few hundred nodes are ~200 kB).
MAX_CHUNK_CHARS = 4_000_000


@dataclass
class ImportedAdapter:
    """One adapter an image names: as the image names it, at what strength, by which hash; where it was found."""

    name: str
    scale: Any = 1.0
    hash: str | None = None  # what the image records (hex, any length from 8 to 64)
    file: str | None = None  # the file name the image records (ComfyUI's lora_name)
    ref: str | None = None  # the registry version found, name@N
    source: str | None = None  # what to load: the registry ref, or the path a lorastack recipe names
    matched_by: str | None = None  # "hash", "tensor_sha256", "name"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scale": self.scale,
            "hash": self.hash,
            "file": self.file,
            "ref": self.ref,
            "source": self.source,
            "matched_by": self.matched_by,
        }


@dataclass
class ImportedRecipe:
    """A recipe read from an image, in lorastack's terms (``scheduler`` a lorastack name, or None: the base's)."""

    made_by: str  # "lorastack", "a1111", "comfyui"
    prompt: str
    negative_prompt: str = ""
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    scheduler: str | None = None
    sampler: str | None = None  # as the image names it
    strength: float | None = None
    model_hash: str | None = None
    model: str | None = None
    adapters: list[ImportedAdapter] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    recipe: dict[str, Any] | None = None  # lorastack's own, when the image has one

    @property
    def missing(self) -> list[ImportedAdapter]:
        return [a for a in self.adapters if a.source is None]

    def to_json(self) -> dict[str, Any]:
        return {
            "made_by": self.made_by,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "steps": self.steps,
            "guidance": self.guidance,
            "width": self.width,
            "height": self.height,
            "scheduler": self.scheduler,
            "sampler": self.sampler,
            "strength": self.strength,
            "base": {"model_hash": self.model_hash, "model": self.model},
            "adapters": [a.to_json() for a in self.adapters],
            "missing": [a.name for a in self.missing],
            "notes": self.notes,
        }

    def lora_options(self) -> list[str]:
        """The found adapters as ``generate --lora`` values (numeric scales only; a dict keeps its number form)."""
        return [f"{a.source}:{a.scale:g}" for a in self.adapters if a.source and isinstance(a.scale, (int, float))]


def read_chunks(path: str | Path) -> dict[str, str]:
    """The PNG's text chunks (tEXt, zTXt, iTXt), each at most :data:`MAX_CHUNK_CHARS`; RecipeError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    from .recipe import InputFileError, open_regular_file

    try:
        with open_regular_file(path) as f, Image.open(f) as image:
            image.load()  # text chunks after the image data are read only with it
            text = dict(getattr(image, "text", None) or {})
            info = {k: v for k, v in image.info.items() if isinstance(v, str)}
            if "parameters" not in text and "parameters" not in info:
                comment = exif_user_comment(image)  # A1111 and Forge save JPEG and WebP infotext there
                if comment:
                    info["parameters"] = comment
    except InputFileError as e:
        raise RecipeError(f"{path}: {e}") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise RecipeError(f"{path}: not a readable image ({brief(str(e)).strip(chr(39))})") from None
    chunks = {**info, **text}
    for key, value in chunks.items():
        if not isinstance(value, str):
            raise RecipeError(f"{path}: its {brief(key)} text chunk is not text")
        if len(value) > MAX_CHUNK_CHARS:
            raise RecipeError(
                f"{path}: its {brief(key)} text chunk is {len(value) / 1e6:.1f} MB; at most "
                f"{MAX_CHUNK_CHARS / 1e6:g} MB is read"
            )
    return chunks


#: EXIF UserComment: an 8-byte character-code prefix, then the text (EXIF 2.3 §4.6.5)
_USER_COMMENT, _EXIF_IFD = 0x9286, 0x8769


def exif_user_comment(image) -> str | None:
    """The text of an image's EXIF UserComment, where A1111 and Forge write the infotext of JPEG and WebP files
    (piexif's ``UNICODE`` code: UTF-16, big-endian as piexif writes it; little-endian and ASCII read too)."""
    try:
        raw = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception:  # Pillow raises several kinds for a damaged EXIF block: then there is no comment to read
        return None
    if isinstance(raw, str):
        return raw.strip("\x00") or None
    if not isinstance(raw, bytes) or len(raw) <= 8 or len(raw) > 4 * MAX_CHUNK_CHARS:
        return None
    code, body = raw[:8], raw[8:]
    if code == b"UNICODE\x00":
        # which byte order: infotext is mostly ASCII, whose high bytes (zeros) come first in big-endian
        order = "utf-16-be" if body[0::2].count(0) >= body[1::2].count(0) else "utf-16-le"
        text = body.decode(order, errors="replace")
    else:
        text = body.decode("utf-8", errors="replace")
    return text.strip("\x00").strip() or None


def import_recipe(path: str | Path, registry=None) -> ImportedRecipe:
    """The recipe in the image at ``path``, its adapters resolved in ``registry`` (default: the user's)."""
    chunks = read_chunks(path)
    if "lorastack" in chunks:
        from .recipe import read_recipe

        imported = from_lorastack(read_recipe(path))
    elif "parameters" in chunks:
        imported = from_a1111(chunks["parameters"], path)
    elif "prompt" in chunks or "workflow" in chunks:
        from .comfyui import from_comfyui

        imported = from_comfyui(chunks, path)
    else:
        raise RecipeError(
            f"{path}: has no lorastack recipe, nor an A1111 'parameters' or ComfyUI 'prompt'/'workflow' text chunk"
        )
    resolve(imported, registry)
    return imported


def from_lorastack(recipe: dict[str, Any]) -> ImportedRecipe:
    scheduler = recipe["scheduler"]
    base = recipe["base"]
    from .recipe import short_hash

    imported = ImportedRecipe(
        "lorastack", recipe["prompt"], recipe.get("negative_prompt") or "", recipe["seed"], recipe["steps"],
        recipe["guidance"], recipe["width"], recipe["height"],
        None if scheduler.startswith("default:") else scheduler, scheduler, recipe.get("strength"),
        short_hash(base["digest"]), Path(base.get("source") or base["location"]).name, recipe=recipe,
    )  # fmt: skip
    for a in recipe["adapters"]:
        imported.adapters.append(ImportedAdapter(a["name"], a["scale"], a["tensor_sha256"], file=a["source"]))
    return imported


def from_a1111(text: str, path: str | Path) -> ImportedRecipe:
    """A1111 infotext: prompt (its ``<lora:…>`` tags become the adapters), settings, Lora hashes."""
    from .infotext import parse_infotext, parse_lora_hashes, scheduler_for
    from .prompts import TAG, parse_tag

    fields = parse_infotext(text, path)
    prompt = fields["Prompt"]
    adapters: dict[str, ImportedAdapter] = {}
    for match in TAG.finditer(prompt):
        try:
            name, scale = parse_tag(match.group(2), match.group(0))
        except LorastackError as e:  # a bad scale in someone else's tag: said in one line, naming the image
            raise RecipeError(f"{path}: {e}") from None
        adapters[name] = ImportedAdapter(name, scale)
    hashes = parse_lora_hashes(fields.get("Lora hashes", ""))
    for name, digest in hashes.items():
        adapters.setdefault(name, ImportedAdapter(name)).hash = digest
    from .prompts import extract_tags

    clean = extract_tags(prompt)[0] if adapters else prompt
    imported = ImportedRecipe(
        "a1111",
        clean,
        fields["Negative prompt"],
        seed=_number(fields, "Seed", path, int, 0, 2**63 - 1),
        steps=_number(fields, "Steps", path, int, 1, 1000),
        guidance=_number(fields, "CFG scale", path, float, 0, 100),
        width=_number(fields, "Size-1", path, int, 8, 8192),
        height=_number(fields, "Size-2", path, int, 8, 8192),
        sampler=fields.get("Sampler"),
        scheduler=scheduler_for(fields.get("Sampler"), fields.get("Schedule type")),
        strength=_number(fields, "Denoising strength", path, float, 0, 1),
        model_hash=_hex(fields.get("Model hash")),
        model=fields.get("Model"),
        adapters=list(adapters.values()),
    )
    if fields.get("Sampler") and imported.scheduler is None:
        imported.notes.append(f"sampler {brief(fields['Sampler'])} has no lorastack scheduler; the base's own is used")
    return imported


def _hex(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    return value if 8 <= len(value) <= 64 and all(c in "0123456789abcdef" for c in value) else None


def _number(fields: dict, key: str, path, kind, low, high):
    """``fields[key]`` as ``kind`` within [low, high], None when absent; RecipeError naming it otherwise."""
    if key not in fields:
        return None
    text = str(fields[key]).strip()
    return check_number(text if len(text) <= 40 else text[:40], key.replace("-1", "").replace("-2", ""), path, kind,
                        low, high)  # fmt: skip


def check_number(value: Any, what: str, path, kind, low, high):
    """``value`` (a number or its text) as ``kind`` within [low, high], else one-line RecipeError naming ``what``."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value) if kind is float else int(str(value).strip())
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or (kind is float and not math.isfinite(number)) or not low <= number <= high:
        raise RecipeError(f"{path}: {what} {brief(value)} is not a {kind.__name__} from {low:g} to {high:g}")
    return number


def check_scale(value: Any, what: str, path) -> float:
    return check_number(value, what, path, float, -MAX_SCALE, MAX_SCALE)


def resolve(imported: ImportedRecipe, registry=None) -> None:
    """Find each adapter: a lorastack recipe's recorded source (its tensor hash checked later), else the registry
    by hash, else (no hash recorded) by file or tag name."""
    from lorastack.registry import Registry
    from lorastack.registry.by_hash import versions_by_hash

    registry = registry or Registry()
    for adapter in imported.adapters:
        found = None
        if adapter.hash:
            matches = versions_by_hash(registry, adapter.hash)
            if matches:
                found, adapter.matched_by = matches[-1], "hash"  # the newest of identical files
        if found is None and imported.made_by == "lorastack" and adapter.file:
            adapter.source, adapter.ref, adapter.matched_by = adapter.file, None, "recipe"
            if "@" in adapter.file and not Path(adapter.file).exists():
                adapter.ref = adapter.file
            continue
        if found is None and not adapter.hash:
            found = _by_name(registry, adapter.file or adapter.name)
            adapter.matched_by = "name" if found is not None else None
        if found is not None:
            adapter.ref = adapter.source = found.ref


def _by_name(registry, name: str):
    from lorastack.registry import RegistryError
    from lorastack.registry.names import parse_ref

    stem = Path(name.replace("\\", "/")).name
    for suffix in (".safetensors", ".ckpt", ".pt", ".bin"):
        stem = stem[: -len(suffix)] if stem.lower().endswith(suffix) else stem
    for candidate in (name, stem):
        try:
            return registry.resolve(parse_ref(candidate))
        except RegistryError:
            continue
    return None


def describe(imported: ImportedRecipe) -> list[str]:
    """The recipe as lines a person reads (what ``recipe import`` prints)."""
    lines = [f"made by: {imported.made_by}", f"prompt: {imported.prompt}"]
    if imported.negative_prompt:
        lines.append(f"negative: {imported.negative_prompt}")
    settings = [
        f"{k} {v}" for k, v in (("seed", imported.seed), ("steps", imported.steps), ("guidance", imported.guidance),
                                ("scheduler", imported.scheduler or imported.sampler)) if v is not None
    ]  # fmt: skip
    if imported.width and imported.height:
        settings.append(f"size {imported.width}x{imported.height}")
    lines.append("settings: " + (", ".join(settings) or "none recorded"))
    lines.append(f"base: {imported.model or 'unknown'} (model hash {imported.model_hash or 'not recorded'})")
    for a in imported.adapters:
        where = a.ref or a.source
        found = f"found: {where} (by {a.matched_by})" if a.source else (
            f"MISSING: look for hash {a.hash}" if a.hash else "MISSING: no hash recorded; import it under this name"
        )  # fmt: skip
        lines.append(f"adapter {a.name} at {json.dumps(a.scale)}: {found}")
    lines.extend(f"note: {n}" for n in imported.notes)
    return lines
