"""Image recipes: everything needed to make an image again, stored in the PNG it describes.

Each PNG carries two text chunks: ``lorastack`` (the recipe as JSON: base identity and digest, each adapter's tensor
hash and scale, prompt, seed, steps, scheduler, size, …) and ``parameters`` (the same in A1111's infotext form, so
other tools show it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from lorastack import __version__
from lorastack.adapters.files import atomic_write_bytes, file_sha256

from .base import BaseInfo
from .config import cache_dir

RECIPE_KEY = "lorastack"
A1111_KEY = "parameters"
RECIPE_VERSION = 1


# --- digests ---------------------------------------------------------------------------------------------------


def cached_sha256(path: str | Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so large bases are hashed once."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    store = cache_dir() / "sha256.json"
    try:
        table = json.loads(store.read_text())
    except (OSError, json.JSONDecodeError):
        table = {}
    if key in table:
        return table[key]
    digest = file_sha256(path)
    table[key] = digest
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(store, json.dumps(table).encode())
    except OSError:
        pass  # a read-only cache only costs speed
    return digest


def base_digest(info: BaseInfo) -> str:
    """A digest that changes whenever the base's weights do.

    Hub repos: ``repo@commit``. Single files: the file's sha256 (its first 10 hex digits are A1111's "Model
    hash"). Folders: sha256 over the sorted (relative path, sha256) of every file in the folder.
    """
    if info.kind == "hub":
        return f"hub:{info.location}@{info.revision}"
    path = Path(info.location)
    if info.kind == "single_file":
        return "sha256:" + cached_sha256(path)
    lines = []
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        lines.append(f"{file.relative_to(path).as_posix()} {cached_sha256(file)}\n")
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def short_hash(digest: str) -> str:
    return digest.split(":", 1)[-1].split("@")[-1][:10]


# --- PNG ---------------------------------------------------------------------------------------------------------


def a1111_parameters(recipe: dict[str, Any]) -> str:
    """The recipe in A1111's infotext form."""
    settings = [
        f"Steps: {recipe['steps']}",
        f"Sampler: {recipe['scheduler']}",
        f"CFG scale: {recipe['guidance']:g}",
        f"Seed: {recipe['seed']}",
        f"Size: {recipe['width']}x{recipe['height']}",
        f"Model hash: {short_hash(recipe['base']['digest'])}",
        f"Model: {Path(recipe['base']['source']).stem}",
    ]
    if recipe.get("strength") is not None:
        settings.append(f"Denoising strength: {recipe['strength']:g}")
    if recipe["adapters"]:
        hashes = ", ".join(f"{a['name']}: {(a['tensor_sha256'] or '')[:12]}" for a in recipe["adapters"])
        settings.append(f'Lora hashes: "{hashes}"')
    settings.append(f"Version: lorastack {__version__}")
    text = recipe["prompt"]
    if recipe.get("negative_prompt"):
        text += f"\nNegative prompt: {recipe['negative_prompt']}"
    return text + "\n" + ", ".join(settings)


def save_png(image, path: str | Path, recipe: dict[str, Any]) -> Path:
    """Save ``image`` with its recipe, atomically."""
    import io

    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(RECIPE_KEY, json.dumps(recipe, sort_keys=True))
    if "steps" in recipe:
        info.add_text(A1111_KEY, a1111_parameters(recipe))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe stored in a PNG by :func:`save_png`; ``ValueError`` naming the file if there is none."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            text = image.info.get(RECIPE_KEY) or getattr(image, "text", {}).get(RECIPE_KEY)
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None
    if not text:
        raise ValueError(f"{path}: has no lorastack recipe (it was not made by lorastack generate)")
    try:
        recipe = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{path}: its lorastack recipe is not valid JSON") from None
    if recipe.get("version") != RECIPE_VERSION:
        raise ValueError(f"{path}: recipe version {recipe.get('version')!r}; this lorastack reads {RECIPE_VERSION}")
    return recipe


def next_free(folder: Path, stem: str) -> Path:
    """``folder/00000-stem.png``, numbered past every PNG already there (never overwrites)."""
    numbers = [int(p.name[:5]) for p in folder.glob("*.png") if p.name[:5].isdigit()]
    n = max(numbers, default=-1) + 1
    while True:
        path = folder / f"{n:05d}-{stem}.png"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # claim the name against parallel runs
        except FileExistsError:
            n += 1
            continue
        os.close(fd)
        return path
