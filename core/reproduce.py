"""Make an image again from the recipe in its PNG, and say whether the pixels match."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lorastack.adapters.files import file_sha256

from .base import load_base
from .errors import ReproduceError
from .generate import GeneratedImage, Generator, options_from_recipe
from .recipe import read_recipe
from .sources import resolve_adapter


@dataclass
class Reproduction:
    result: GeneratedImage
    recipe: dict[str, Any]
    identical: bool
    max_difference: int  # largest per-channel difference, 0–255


def reproduce(
    image_path: str | Path, *, base: str | None = None, device: str = "cpu", progress: bool = False
) -> Reproduction:
    """Regenerate ``image_path`` from its recipe. The base and adapters must be the ones recorded (by digest).

    ``base`` replaces the recorded base (its digest is then not checked). ``progress``: diffusers' progress bar.
    """
    recipe = read_recipe(image_path)  # every field checked (RecipeError, a ReproduceError) before anything loads
    recorded = recipe["base"]
    config = recorded.get("config") if base is None else None
    # a FLUX.1 / SD3 single file's parts, as recorded (path and size; the size is checked by the digest's caller)
    parts = {slot: c["path"] for slot, c in (recorded.get("components") or {}).items()} if base is None else {}
    if base is None and recorded.get("t5_tokenizer"):
        parts["t5_tokenizer"] = recorded["t5_tokenizer"]
    pipe = load_base(base or recorded["location"], dtype=recorded["dtype"], device=device, config=config, **parts)
    generator = Generator(pipe, progress=progress)
    if base is None and generator.digest != recorded["digest"]:
        raise ReproduceError(
            f"the base {recorded['location']} has changed since {image_path} was made "
            f"(digest {generator.digest[:23]}… vs {recorded['digest'][:23]}…); pass --base to use it anyway"
        )
    for adapter in recipe["adapters"]:
        path, label = resolve_adapter(adapter["source"])
        generator.stack.load(adapter["name"], path, label=label)
        now = generator.stack.get(adapter["name"]).tensor_sha256
        if adapter["tensor_sha256"] and now != adapter["tensor_sha256"]:
            raise ReproduceError(
                f"adapter '{adapter['name']}' ({adapter['source']}) has changed since {image_path} was made "
                f"(tensor sha256 {now[:12]} vs {adapter['tensor_sha256'][:12]})"
            )
    for key in ("init_image", "mask"):
        if key in recipe and Path(recipe[key]["path"]).is_file():
            if file_sha256(recipe[key]["path"]) != recipe[key]["sha256"]:
                raise ReproduceError(f"the {key.replace('_', ' ')} {recipe[key]['path']} has changed")
        elif key in recipe:
            raise ReproduceError(f"the {key.replace('_', ' ')} {recipe[key]['path']} is missing")
    options = options_from_recipe(recipe)
    if "compare" in recipe:
        result = generator.compare(options, prompts=recipe["compare"]["prompts"])
    else:
        result = generator.generate(options)[0]
    from PIL import Image

    with Image.open(image_path) as original:
        before = np.asarray(original.convert("RGB"), dtype=np.int16)
    after = np.asarray(result.image.convert("RGB"), dtype=np.int16)
    if before.shape != after.shape:
        return Reproduction(result, recipe, False, 255)
    difference = int(np.abs(before - after).max())
    return Reproduction(result, recipe, difference == 0, difference)


def known_base(model_hash: str | None) -> str | None:
    """A file lorastack has hashed (its sha256 cache) whose sha256 starts with ``model_hash``, if it still exists
    unchanged; None otherwise. A1111's Model hash is the checkpoint's first 10 hex digits."""
    import json

    from .config import cache_dir
    from .errors import ConfigError
    from .recipe import InputFileError, open_regular_file

    if not model_hash or len(model_hash) < 8:
        return None
    try:
        with open_regular_file(cache_dir() / "sha256.json") as f:
            table = json.loads(f.read(50_000_000))
    except (ConfigError, InputFileError, OSError, ValueError, RecursionError):
        return None
    if not isinstance(table, dict):
        return None
    for key, digest in table.items():
        if isinstance(key, str) and isinstance(digest, str) and digest.startswith(model_hash):
            path = key.rsplit("|", 2)[0]
            if path and Path(path).is_file() and _identity(path) == key:
                return path
    return None


def _identity(path: str) -> str:
    """The cache key :func:`~lorastack.core.recipe.cached_sha256` files a path under (it changes with the file)."""
    st = Path(path).stat()
    return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"


def reproduce_foreign(
    image_path: str | Path, *, base: str | None = None, device: str = "cpu", progress: bool = False, registry=None
) -> Reproduction:
    """Make an image another tool made (A1111 infotext, ComfyUI graph) again with lorastack, as closely as its
    recipe allows: other samplers' noise differs, so the pixels are compared but rarely identical.

    Missing adapters and an unknown base (``base`` not given and the model hash not among files lorastack has
    hashed) are one-line :class:`ReproduceError`\\ s, said before any model loads.
    """
    from .generate import GenerateOptions
    from .recipe_import import import_recipe

    imported = import_recipe(image_path, registry)
    if imported.missing:
        wanted = ", ".join(
            f"{a.name} ({'hash ' + a.hash if a.hash else a.file or 'no hash'})" for a in imported.missing
        )
        raise ReproduceError(f"{image_path}: adapters not in the registry: {wanted}; import them and try again")
    if base is None:
        base = known_base(imported.model_hash)
        if base is None:
            raise ReproduceError(
                f"{image_path} was made by {imported.made_by} with base {imported.model or 'unknown'} (model hash "
                f"{imported.model_hash or 'not recorded'}), which lorastack does not know; pass --base"
            )
    pipe = load_base(base, device=device)
    generator = Generator(pipe, progress=progress)
    for adapter in imported.adapters:
        path, label = resolve_adapter(adapter.source)
        generator.stack.load(adapter.name, path, label=label)
    options = GenerateOptions(
        prompt=imported.prompt, negative_prompt=imported.negative_prompt, steps=imported.steps or 25,
        guidance=imported.guidance, width=imported.width, height=imported.height, seed=imported.seed,
        scheduler=imported.scheduler, adapters={a.name: a.scale for a in imported.adapters},
    )  # fmt: skip
    result = generator.generate(options)[0]
    from PIL import Image

    with Image.open(image_path) as original:
        before = np.asarray(original.convert("RGB"), dtype=np.int16)
    after = np.asarray(result.image.convert("RGB"), dtype=np.int16)
    if before.shape != after.shape:
        return Reproduction(result, result.recipe, False, 255)
    difference = int(np.abs(before - after).max())
    return Reproduction(result, result.recipe, difference == 0, difference)
