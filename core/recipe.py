"""Image recipes: everything needed to make an image again, stored in the PNG it describes.

Each PNG carries two text chunks: ``lorastack`` (the recipe as JSON: base identity and digest, each adapter's tensor
hash and scale, prompt, seed, steps, scheduler, size, …) and ``parameters`` (the same in A1111's infotext form, so
other tools show it).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from lorastack.adapters.errors import AdapterError
from lorastack.adapters.files import file_sha256
from lorastack.adapters.outputs import atomic_write_bytes

from .base import BaseInfo
from .config import cache_dir
from .errors import ConfigError, LorastackError, RecipeError
from .scales import brief

RECIPE_KEY = "lorastack"
A1111_KEY = "parameters"
RECIPE_VERSION = 1
#: The largest recipe read back: what lorastack writes stays far below (prompts are bounded; see generate.py).
MAX_RECIPE_CHARS = 1_000_000
MAX_PATH_CHARS = 4096
MAX_LABEL_CHARS = 200  # names, digests, revisions, version strings, grid column labels


class InputFileError(LorastackError, OSError):
    """An input path that is not a regular file (missing, a folder, a FIFO, a device); the message says which."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular_file(path: str | Path) -> BinaryIO:
    """``path`` opened for reading, or :class:`InputFileError` unless it is a regular file.

    The file is opened without blocking and checked after opening, so a FIFO never hangs the reader and nothing can
    be swapped in between the check and the read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise InputFileError("no such file") from None
    except OSError as e:
        raise InputFileError(f"cannot be read ({e.strerror or e})") from None
    except ValueError as e:  # a NUL byte in the path
        raise InputFileError(f"cannot be read ({e})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise InputFileError(f"is {_kind(mode)}, not a file")
    return os.fdopen(fd, "rb")


# --- digests ---------------------------------------------------------------------------------------------------


def cached_sha256(path: str | Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so large bases are hashed once."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    try:
        store = cache_dir() / "sha256.json"
    except ConfigError:  # an unusable LORASTACK_HOME: the commands report it; here it only costs speed
        return file_sha256(path)
    try:
        with open_regular_file(store) as f:  # a FIFO or a folder there is no cache (and never blocks)
            table = json.loads(f.read())
    except (OSError, ValueError, RecursionError):
        table = {}
    if not isinstance(table, dict):
        table = {}
    if isinstance(table.get(key), str):
        return table[key]
    digest = file_sha256(path)
    table[key] = digest
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(store, json.dumps(table).encode())
    except (OSError, AdapterError):
        pass  # a read-only cache (or something not a file in its place) only costs speed
    return digest


def base_digest(info: BaseInfo) -> str:
    """A digest that changes whenever the base's weights do.

    Hub repos: ``repo@commit``. Single files: the file's sha256 (its first 10 hex digits are A1111's "Model
    hash"); with parts given as files (a FLUX.1 transformer with its text encoders and VAE, a T5 tokenizer folder),
    sha256 over each part's name and sha256. Folders: sha256 over the sorted (relative path, sha256) of every file in
    the folder.
    """
    if info.kind == "hub":
        return f"hub:{info.location}@{info.revision}"
    path = Path(info.location)
    if info.kind == "single_file":
        parts = info.extra.get("components") or {}
        tokenizer = info.extra.get("t5_tokenizer")
        if not parts and not tokenizer:
            return "sha256:" + cached_sha256(path)
        # a transformer file with its parts given as files: each of them decides the pixels too
        files = [("base", path), *((slot, Path(parts[slot]["path"])) for slot in sorted(parts))]
        if tokenizer:
            folder = Path(tokenizer)
            files += [(f"t5_tokenizer/{f.relative_to(folder).as_posix()}", f) for f in sorted(folder.rglob("*"))
                      if f.is_file() and not f.name.startswith(".")]  # fmt: skip
        return _digest_lines(files)
    lines = []
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        lines.append(f"{file.relative_to(path).as_posix()} {cached_sha256(file)}\n")
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def model_digest(pipe) -> str:
    """The identity of a pipeline's weights: :func:`base_digest` of what :func:`~lorastack.core.base.load_base`
    loaded, else (a pipeline built in memory, with no files to hash) a digest of its denoiser's (UNet's or
    transformer's) config and first tensors. Taken before adapters are applied: a stack patches the weights in
    place."""
    from .base import base_info

    info = base_info(pipe)
    if info is not None and info.kind != "pipeline":
        return base_digest(info)
    import torch

    from .modules import denoiser

    model = denoiser(pipe)
    h = hashlib.sha256(json.dumps(dict(model.config), sort_keys=True, default=str).encode())
    for _, tensor in list(model.state_dict().items())[:4]:
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return "weights:" + h.hexdigest()


def _digest_lines(files: list[tuple[str, Path]]) -> str:
    return (
        "sha256:" + hashlib.sha256("".join(f"{name} {cached_sha256(p)}\n" for name, p in files).encode()).hexdigest()
    )


def short_hash(digest: str) -> str:
    return digest.split(":", 1)[-1].split("@")[-1][:10]


# --- PNG ---------------------------------------------------------------------------------------------------------


def a1111_parameters(recipe: dict[str, Any]) -> str:
    """The recipe in A1111's infotext form (:mod:`lorastack.core.infotext`)."""
    from .infotext import write_infotext

    return write_infotext(recipe, short_hash(recipe["base"]["digest"]))


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
    """The recipe stored in a PNG by :func:`save_png`, checked by :func:`validate_recipe`.

    :class:`RecipeError` (a ``ValueError``) naming the file if it is not a readable image, holds no recipe, or holds
    one that is too large, not JSON, or not what lorastack writes.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with open_regular_file(path) as f, Image.open(f) as image:
            text = image.info.get(RECIPE_KEY) or getattr(image, "text", {}).get(RECIPE_KEY)
    except InputFileError as e:
        raise RecipeError(f"{path}: {e}") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise RecipeError(f"{path}: not a readable image ({brief(str(e)).strip(chr(39))})") from None
    if not text:
        raise RecipeError(f"{path}: has no lorastack recipe (it was not made by lorastack generate)")
    if not isinstance(text, str) or len(text) > MAX_RECIPE_CHARS:
        size = len(text) / 1e6 if isinstance(text, (str, bytes)) else 0
        raise RecipeError(f"{path}: its lorastack recipe is {size:.1f} MB; a recipe is at most 1 MB")
    try:
        recipe = json.loads(text)
    except (ValueError, RecursionError) as e:  # also: nested past the recursion limit, integers past the digit limit
        raise RecipeError(f"{path}: its lorastack recipe is not valid JSON ({brief(str(e)).strip(chr(39))})") from None
    from .recipe_schema import validate_recipe

    return validate_recipe(recipe, path)


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
