"""Generation with the active adapter stack: txt2img, img2img, inpainting, base-vs-adapter comparison grids."""

from __future__ import annotations

import math
import platform
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from lorastack import __version__
from lorastack.adapters import AdapterError

from .base import BaseInfo, base_info
from .errors import GenerationError, UnknownAdapterError
from .modules import pipeline_family
from .options import SCHEDULERS
from .prompts import add_trigger_words, extract_tags
from .recipe import RECIPE_VERSION, InputFileError, base_digest, open_regular_file
from .scales import (
    MAX_SCALE,  # noqa: F401 - re-exported: the scale bound lives with the scale specifications
    brief,
    check_scale,
    is_utf8,
    validate_spec,
)
from .stack import NAME_PATTERN, AdapterStack

MODES = ("txt2img", "img2img", "inpaint")
DEFAULT_GUIDANCE = 7.0

# --- bounds -------------------------------------------------------------------------------------------------------
# What generation accepts, from the command line, from Python and from a recipe read back from an image (the recipe
# validator in recipe.py uses these too). Each is far beyond what any real use needs, and refuses what would run for
# days, exhaust memory or overflow before any model loads.

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


@dataclass
class GenerateOptions:
    """What to generate. ``None`` sizes mean the model's native size; a ``None`` seed picks one at random."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 25
    guidance: float | None = None  # None: the base's recommended guidance (its lorastack.json), else DEFAULT_GUIDANCE
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    num_images: int = 1
    scheduler: str | None = None
    init_image: str | Path | None = None
    mask: str | Path | None = None
    strength: float = 0.75
    trigger: bool = False
    adapters: dict[str, Any] = field(default_factory=dict)  # name → scale, on top of the prompt's tags


@dataclass
class GeneratedImage:
    image: Any  # PIL.Image.Image
    recipe: dict[str, Any]


NAME_RULE = "use letters, digits and . _ - / @ +, starting with a letter or digit, at most 200 characters"


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


def _check(options: GenerateOptions, pipe) -> tuple[str, int, int]:
    check_options(options, pipeline_family(pipe))
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = options.width if options.width is not None else native
    height = options.height if options.height is not None else native
    for label, value in (("width", width), ("height", height)):
        _require(SIDE, value, label)
    mode = "inpaint" if options.mask is not None else "img2img" if options.init_image is not None else "txt2img"
    return mode, width, height


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


class Generator:
    """Generates with one pipeline and its adapter stack, and writes down a recipe for every image."""

    def __init__(self, pipe, stack: AdapterStack | None = None, info: BaseInfo | None = None):
        self.pipe = pipe
        self.stack = stack or AdapterStack(pipe)
        self.info = info or base_info(pipe) or BaseInfo("pipeline", "pipeline", "pipeline", pipeline_family(pipe))
        self._pipes: dict[str, Any] = {"txt2img": pipe}
        self._digest: str | None = None

    def _pipeline(self, mode: str):
        if mode not in self._pipes:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            cls = AutoPipelineForImage2Image if mode == "img2img" else AutoPipelineForInpainting
            self._pipes[mode] = cls.from_pipe(self.pipe)  # shares the (patched) modules: no copy
            self._pipes[mode].set_progress_bar_config(disable=True)
        return self._pipes[mode]

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = base_digest(self.info) if self.info.kind != "pipeline" else "unknown"
        return self._digest

    # --- public --------------------------------------------------------------------------------------------------
    def plan(self, options: GenerateOptions) -> tuple[str, dict[str, Any]]:
        """The prompt as the model will see it and the adapter stack it asks for (``--lora`` plus prompt tags)."""
        prompt, tags = extract_tags(options.prompt)
        stack = {**options.adapters, **tags}
        for name in stack:
            if name not in self.stack:
                self._load_by_name(name)
        if options.trigger:
            words = [w for name in stack for w in self.stack.get(name).trigger_words]
            prompt = add_trigger_words(prompt, words)
            _check_prompt_length(prompt, "the prompt with the adapters' trigger words")  # from their files
        return prompt, stack

    def _with_defaults(self, options: GenerateOptions) -> GenerateOptions:
        """Settings left unset take the base's recommended values (``lorastack.json``), else lorastack's defaults."""
        if options.guidance is None:
            options = replace(options, guidance=self.info.recommended.get("guidance", DEFAULT_GUIDANCE))
        return options

    def _load_by_name(self, name: str) -> None:
        """A prompt tag naming an adapter that is not loaded: load it from the registry (or a file) by that name."""
        from .sources import resolve_adapter

        try:
            path, label = resolve_adapter(name)
            self.stack.load(name, path, label=label)
        except (UnknownAdapterError, AdapterError) as e:
            loaded = ", ".join(self.stack.loaded) or "none"
            raise UnknownAdapterError(
                f"adapter name(s) '{name}' not loaded; loaded adapters: {loaded} ({e})"
            ) from None

    def generate(self, options: GenerateOptions) -> list[GeneratedImage]:
        """``num_images`` images, image ``i`` with seed ``seed + i``, each made on its own so it reproduces alone."""
        options = self._with_defaults(options)
        mode, width, height = _check(options, self.pipe)
        prompt, stack = self.plan(options)
        seed = options.seed if options.seed is not None else secrets.randbelow(2**32)
        images = self._inputs(options, width, height)
        out = []
        with self.stack.activated(stack):
            for i in range(options.num_images):
                image = self._run(mode, prompt, options, width, height, seed + i, images)
                out.append(GeneratedImage(image, self._recipe(mode, prompt, options, width, height, seed + i, stack)))
        return out

    def compare(self, options: GenerateOptions, prompts: list[str] | None = None) -> GeneratedImage:
        """One grid on one seed per row: the base, each adapter alone, and the whole stack (when several).

        With ``trigger``, each column's prompt carries the trigger words of its own adapters; ``prompts`` gives the
        columns' prompts outright (as recorded in a grid's recipe).
        """
        options = self._with_defaults(options)
        mode, width, height = _check(options, self.pipe)
        _, stack = self.plan(options)
        if not stack:
            raise GenerationError("--compare needs at least one adapter (--lora or a <lora:…> tag)")
        seed = options.seed if options.seed is not None else secrets.randbelow(2**32)
        columns = [("base", {})] + [(name, {name: scale}) for name, scale in stack.items()]
        if len(stack) > 1:
            columns.append(("all", stack))
        if prompts is None:
            bare = extract_tags(options.prompt)[0]
            prompts = [
                add_trigger_words(bare, [w for n in column for w in self.stack.get(n).trigger_words])
                if options.trigger
                else bare
                for _, column in columns
            ]
        if len(prompts) != len(columns):
            raise GenerationError(f"{len(prompts)} column prompts for {len(columns)} columns")
        for text in prompts:
            _check_prompt_length(text, "a column prompt")
        images = self._inputs(options, width, height)
        rows = []
        for i in range(options.num_images):
            row = []
            for (_, column_stack), cell_prompt in zip(columns, prompts):
                with self.stack.activated(column_stack):
                    row.append(self._run(mode, cell_prompt, options, width, height, seed + i, images))
            rows.append(row)
        grid = _grid(rows, [label for label, _ in columns])
        recipe = self._recipe(mode, prompts[-1], options, width, height, seed, stack)
        recipe["compare"] = {
            "columns": [label for label, _ in columns],
            "prompts": prompts,
            "rows": options.num_images,
        }
        return GeneratedImage(grid, recipe)

    # --- internals -----------------------------------------------------------------------------------------------
    def _inputs(self, options: GenerateOptions, width: int, height: int) -> dict[str, Any]:
        images: dict[str, Any] = {}
        if options.init_image is not None:
            images["image"] = _open_image(options.init_image, "init image").resize((width, height))
        if options.mask is not None:
            mask = _open_image(options.mask, "mask", "L")
            source = _open_image(options.init_image, "init image")
            if mask.size != source.size:
                raise GenerationError(
                    f"mask {options.mask} is {mask.size[0]}x{mask.size[1]} but the init image is "
                    f"{source.size[0]}x{source.size[1]}; they must be the same size"
                )
            images["mask_image"] = mask.resize((width, height))
        return images

    def _run(self, mode, prompt, options, width, height, seed, images):
        pipe = self._pipeline(mode)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        kwargs: dict[str, Any] = dict(
            prompt=prompt,
            negative_prompt=options.negative_prompt or None,
            num_inference_steps=options.steps,
            guidance_scale=options.guidance,
            generator=generator,
            **images,
        )
        if mode == "img2img":
            kwargs["strength"] = options.strength
        else:
            kwargs.update(width=width, height=height)
            if mode == "inpaint":
                kwargs["strength"] = options.strength
        original = pipe.scheduler
        if options.scheduler is not None:
            import diffusers

            cls_name, extra = SCHEDULERS[options.scheduler]
            pipe.scheduler = getattr(diffusers, cls_name).from_config(original.config, **extra)
        try:
            return pipe(**kwargs).images[0]
        finally:
            pipe.scheduler = original

    def _recipe(self, mode, prompt, options, width, height, seed, stack) -> dict[str, Any]:
        import diffusers

        info = self.info
        adapters = []
        for name, scale in stack.items():
            loaded = self.stack.get(name)
            adapters.append(
                {"name": name, "source": loaded.source, "tensor_sha256": loaded.tensor_sha256, "scale": scale}
            )
        images = {}
        for key, path in (("init_image", options.init_image), ("mask", options.mask)):
            if path is not None:
                from lorastack.adapters.files import file_sha256

                images[key] = {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}
        return {
            "version": RECIPE_VERSION,
            "mode": mode,
            "prompt": prompt,
            "negative_prompt": options.negative_prompt,
            "seed": seed,
            "steps": options.steps,
            "guidance": options.guidance,
            "width": width,
            "height": height,
            "scheduler": options.scheduler or f"default:{type(self.pipe.scheduler).__name__}",
            "strength": options.strength if mode != "txt2img" else None,
            **images,
            "base": {
                "source": info.source,
                "config": info.extra.get("config"),
                "kind": info.kind,
                "location": info.location,
                "family": info.family,
                "revision": info.revision,
                "dtype": info.dtype,
                "digest": self.digest,
            },
            "adapters": adapters,
            "device": str(self.stack._device()),
            "versions": {
                "lorastack": __version__,
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "python": platform.python_version(),
            },
        }


def _grid(rows: list[list[Any]], labels: list[str]):
    """Cells in a grid with a label strip above each column."""
    from PIL import Image, ImageDraw, ImageFont

    cell_w, cell_h = rows[0][0].size
    strip = 14
    grid = Image.new("RGB", (cell_w * len(labels), strip + cell_h * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for c, label in enumerate(labels):
        draw.text((c * cell_w + 2, 1), label[: max(1, cell_w // 6)], fill="black", font=font)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image, (c * cell_w, strip + r * cell_h))
    return grid


def options_from_recipe(recipe: dict[str, Any], **overrides) -> GenerateOptions:
    """The options that made an image, from its recipe (the adapters come back by name)."""
    scheduler = recipe["scheduler"]
    options = GenerateOptions(
        prompt=recipe["prompt"],
        negative_prompt=recipe.get("negative_prompt") or "",
        steps=recipe["steps"],
        guidance=recipe["guidance"],
        width=recipe["width"],
        height=recipe["height"],
        seed=recipe["seed"],
        num_images=recipe.get("compare", {}).get("rows", 1),
        scheduler=None if scheduler.startswith("default:") else scheduler,
        init_image=recipe.get("init_image", {}).get("path"),
        mask=recipe.get("mask", {}).get("path"),
        strength=recipe["strength"] if recipe.get("strength") is not None else 0.75,
        adapters={a["name"]: a["scale"] for a in recipe["adapters"]},
    )
    return replace(options, **overrides)
