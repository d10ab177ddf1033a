"""What generation accepts, checked before any model loads: numbers, prompts, adapter names and scales, input images.

The bounds apply from the command line, from Python and to a recipe read back from an image (the recipe validator in
recipe.py uses them too). Each is far beyond what any real use needs, and refuses what would run for days, exhaust
memory or overflow before any model loads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import GenerationError
from .options import FLOW_SCHEDULERS, SCHEDULERS
from .prompts import extract_tags
from .recipe import InputFileError, open_regular_file
from .scales import brief, check_scale, is_utf8, validate_spec
from .stack import NAME_PATTERN, NAME_RULE

if TYPE_CHECKING:
    from .generate import GenerateOptions

#: Steps: the SD schedulers are trained with 1000 timesteps, and most refuse more inference steps than that.
MAX_STEPS = 1000
#: Width and height: 8192 px is 256 times SD 1.5's 512×512 area; the VAE decode alone would need tens of GB there.
MAX_SIDE = 8192
#: Images per run: each is kept in memory until all are made (a comparison grid holds every row); A1111 stops at 100.
MAX_NUM_IMAGES = 100
#: Guidance: A1111's CFG scale stops at 30, and far above it every image is saturated noise; NaN and inf never work.
MAX_GUIDANCE = 100.0
#: Seeds: torch generators take 64 bits; ``seed + i`` of the last image must fit as well.
MAX_SEED = 2**63 - 1
#: Prompt and negative prompt: CLIP reads 77 tokens (a few hundred characters); this leaves room for many tags.
MAX_PROMPT_CHARS = 10_000
#: Adapters in one stack (``--lora`` options plus prompt tags): a grid has a column per adapter.
MAX_ADAPTERS = 64


@dataclass(frozen=True)
class Bound:
    """A range of integers (or of finite numbers), and how it is said in a message."""

    low: float
    high: float
    text: str
    integer: bool = True
    multiple: int = 1
    low_open: bool = False

    def problem(self, value: Any) -> str | None:
        """``None`` when ``value`` fits, else what it must be ("at least 1 and at most 1000")."""
        kinds = int if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            return f"{'an integer' if self.integer else 'a number'} {self.text}"
        if isinstance(value, float) and not math.isfinite(value):
            return self.text
        if value < self.low or (self.low_open and value == self.low) or value > self.high:
            return self.text
        if self.multiple > 1 and value % self.multiple:
            return self.text
        return None


STEPS = Bound(1, MAX_STEPS, f"at least 1 and at most {MAX_STEPS}")
SIDE = Bound(8, MAX_SIDE, f"a positive multiple of 8, at most {MAX_SIDE}", multiple=8)
NUM_IMAGES = Bound(1, MAX_NUM_IMAGES, f"at least 1 and at most {MAX_NUM_IMAGES}")
SEED = Bound(0, MAX_SEED, f"at least 0 and at most {MAX_SEED}")
GUIDANCE = Bound(0, MAX_GUIDANCE, f"a finite number, at least 0 and at most {MAX_GUIDANCE:g}", integer=False)
STRENGTH = Bound(0, 1, "in (0, 1]", integer=False, low_open=True)


def valid_name(name: Any) -> bool:
    """An adapter name the stack accepts (``NAME_PATTERN``; ``$`` there would also let a trailing newline through)."""
    return isinstance(name, str) and "\n" not in name and NAME_PATTERN.match(name) is not None


def _check_prompt_length(text: Any, label: str) -> None:
    if not isinstance(text, str):
        raise GenerationError(f"{label} must be a string, got {brief(text)}")
    if len(text) > MAX_PROMPT_CHARS:
        raise GenerationError(f"{label} is {len(text)} characters; at most {MAX_PROMPT_CHARS} characters")
    if not is_utf8(text):  # bytes a terminal or file passed through undecoded: the tokenizer cannot take them
        raise GenerationError(f"{label} {brief(text)} holds bytes that are not UTF-8 text; give the prompt as text")


def _require(bound: Bound, value: Any, label: str) -> None:
    problem = bound.problem(value)
    if problem is not None:
        raise GenerationError(f"{label} must be {problem}, got {brief(value)}")


def _check_scheduler_family(scheduler: str, family: str) -> None:
    from lorastack.adapters.families import FAMILY_TABLE

    fam = FAMILY_TABLE.get(family)
    flow = fam is not None and fam.objective == "flow"
    if flow != (scheduler in FLOW_SCHEDULERS):
        valid = FLOW_SCHEDULERS if flow else tuple(s for s in SCHEDULERS if s not in FLOW_SCHEDULERS)
        label = fam.label if fam is not None else family
        raise GenerationError(f"scheduler {scheduler!r} does not fit a {label} base; choose one of {', '.join(valid)}")


def check_options(options: GenerateOptions, family: str | None = None) -> None:
    """Everything about ``options`` that needs no model: types, ranges, prompt tags, scales, input images.

    Raises :class:`GenerationError` (or :class:`ScaleError`) naming the option, the value and what is valid. Scale
    dicts are checked only with ``family`` (block-weight counts depend on it).
    """
    _check_prompt_length(options.prompt, "prompt")
    if options.negative_prompt is not None:
        _check_prompt_length(options.negative_prompt, "negative prompt")
    _require(STEPS, options.steps, "steps")
    _require(NUM_IMAGES, options.num_images, "num-images")
    if options.guidance is not None:
        _require(GUIDANCE, options.guidance, "guidance")
    for label, value in (("width", options.width), ("height", options.height)):
        if value is not None:
            _require(SIDE, value, label)
    if options.seed is not None:
        _require(SEED, options.seed, "seed")
        if options.seed + options.num_images - 1 > MAX_SEED:
            raise GenerationError(
                f"seed {options.seed} with {options.num_images} images goes past the largest seed, {MAX_SEED}"
            )
    _require(STRENGTH, options.strength, "strength")
    if options.scheduler is not None and options.scheduler not in SCHEDULERS:
        raise GenerationError(f"unknown scheduler {brief(options.scheduler)}; choose one of {', '.join(SCHEDULERS)}")
    if options.scheduler is not None and family is not None:
        _check_scheduler_family(options.scheduler, family)
    if family == "flux" and options.negative_prompt:
        raise GenerationError(
            "FLUX.1 is guidance-distilled and takes no negative prompt; leave --negative out "
            "(--guidance sets its distilled guidance)"
        )
    if not isinstance(options.adapters, Mapping):
        raise GenerationError(f"adapters must map names to scales, got {brief(options.adapters)}")
    _, tags = extract_tags(options.prompt)
    count = len({*options.adapters, *tags})
    if count > MAX_ADAPTERS:
        raise GenerationError(f"{count} adapters (--lora and prompt tags); at most {MAX_ADAPTERS} can be stacked")
    for name in (*options.adapters, *tags):
        if not valid_name(name):
            raise GenerationError(f"invalid adapter name {brief(name)}: {NAME_RULE}")
    for name, scale in options.adapters.items():
        if not isinstance(scale, Mapping):
            check_scale(scale, f"scale of adapter {brief(name)}")
        elif family is not None:
            validate_spec(scale, family)
    if options.mask is not None and options.init_image is None:
        raise GenerationError("a mask needs an init image to paint into (--init-image)")
    if options.init_image is not None:
        size = check_image_file(options.init_image, "init image")
        if options.mask is not None:
            mask = check_image_file(options.mask, "mask")
            if mask != size:
                raise GenerationError(
                    f"mask {options.mask} is {mask[0]}x{mask[1]} but the init image is {size[0]}x{size[1]}; "
                    "they must be the same size"
                )


def check_image_file(path: str | Path, what: str) -> tuple[int, int]:
    """The size (after EXIF rotation) of the image at ``path``, reading its header only; :class:`GenerationError`
    for a missing file, a FIFO or device, a folder, something Pillow cannot read, or a decompression bomb."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(path, (str, Path)):
        raise GenerationError(f"{what} must be a path, got {brief(path)}")
    try:
        with open_regular_file(path) as f, Image.open(f) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112)
    except (InputFileError, Image.DecompressionBombError) as e:  # missing, a FIFO, a folder; too many pixels
        raise GenerationError(f"{what} {path}: {e}") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise GenerationError(f"{what} {path}: not a readable image ({e})") from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _open_image(path: str | Path, what: str, mode: str = "RGB"):
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with open_regular_file(path) as f, Image.open(f) as image:
            return ImageOps.exif_transpose(image).convert(mode)
    except (InputFileError, Image.DecompressionBombError) as e:
        raise GenerationError(f"{what} {path}: {e}") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise GenerationError(f"{what} {path}: not a readable image ({e})") from None
