"""Generation with the active adapter stack: txt2img, img2img, inpainting, base-vs-adapter comparison grids."""

from __future__ import annotations

import platform
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from lorastack import __version__
from lorastack.adapters import AdapterError
from lorastack.adapters.families import ALL_COMPONENTS, FAMILY_TABLE

from .base import BaseInfo, base_info
from .errors import GenerationError, UnknownAdapterError
from .grids import labelled_grid
from .limits import (  # re-exported: callers and recipe.py know the bounds from here
    GUIDANCE,
    MAX_ADAPTERS,
    MAX_GUIDANCE,
    MAX_NUM_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    NUM_IMAGES,
    SEED,
    SIDE,
    STEPS,
    STRENGTH,
    Bound,
    _check_prompt_length,
    _open_image,
    _require,
    check_image_file,
    check_options,
    valid_name,
)
from .modules import pipeline_family
from .options import SCHEDULERS
from .prompts import add_trigger_words, extract_tags, misread_scale
from .recipe import RECIPE_VERSION, base_digest
from .scales import MAX_SCALE  # re-exported: the scale bound lives with the scale specifications
from .stack import NAME_RULE, AdapterStack

__all__ = [
    "GUIDANCE", "MAX_ADAPTERS", "MAX_GUIDANCE", "MAX_NUM_IMAGES", "MAX_PROMPT_CHARS", "MAX_SCALE", "MAX_SEED",
    "MAX_SIDE", "MAX_STEPS", "MODES", "NAME_RULE", "NUM_IMAGES", "SEED", "SIDE", "STEPS", "STRENGTH", "Bound",
    "GenerateOptions", "GeneratedImage", "Generator", "check_image_file", "check_options", "options_from_recipe",
    "valid_name",
]  # fmt: skip

MODES = ("txt2img", "img2img", "inpaint")


@dataclass
class GenerateOptions:
    """What to generate. ``None`` sizes and guidance mean the base's own (:mod:`lorastack.core.base_settings`: its
    ``lorastack.json``, else its configs, else its family's); a ``None`` seed picks one at random."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 25
    guidance: float | None = None
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


def _check(options: GenerateOptions, pipe) -> tuple[str, int, int]:
    from .base_settings import pipe_settings

    family = pipeline_family(pipe)
    check_options(options, family)
    native = pipe_settings(pipe).resolution
    width = options.width if options.width is not None else native
    height = options.height if options.height is not None else native
    multiple = side_multiple(pipe)
    for label, value in (("width", width), ("height", height)):
        _require(SIDE, value, label)
        if value % multiple:
            raise GenerationError(
                f"{label} {value} is not a multiple of {multiple}, which this base's latents need; "
                f"try {_nearest(value, multiple)}"
            )
    mode = "inpaint" if options.mask is not None else "img2img" if options.init_image is not None else "txt2img"
    return mode, width, height


def side_multiple(pipe) -> int:
    """What image sides must be a multiple of: the VAE's factor, times the transformer's patch (Flux packs latents
    2×2; SD3 patches them by its patch size)."""
    vae = getattr(pipe, "vae_scale_factor", 8)
    family = pipeline_family(pipe)
    if family == "flux":
        return vae * 2
    if family == "sd3":
        return vae * int(pipe.transformer.config.get("patch_size", 2))
    return 8


def _takes(pipe, argument: str) -> bool:
    import inspect

    return argument in inspect.signature(type(pipe).__call__).parameters


def _nearest(value: int, multiple: int) -> str:
    low = max(multiple, value // multiple * multiple)
    return f"{low} or {low + multiple}" if low < value else str(low)


def family_kwargs(pipe, options: GenerateOptions) -> dict[str, Any]:
    """The pipeline arguments one family needs and the others do not take."""
    family = pipeline_family(pipe)
    if family not in ("flux", "sd3"):
        return {"negative_prompt": options.negative_prompt or None}
    t5 = pipe.tokenizer_2 if family == "flux" else pipe.tokenizer_3
    # FLUX.1 dev reads 512 T5 tokens, schnell and SD3 256 (diffusers' limits); never more than the tokenizer holds
    limit = 512 if family == "flux" and pipe.transformer.config.get("guidance_embeds") else 256
    kwargs: dict[str, Any] = {"max_sequence_length": min(limit, int(getattr(t5, "model_max_length", limit) or limit))}
    if family == "sd3":
        kwargs["negative_prompt"] = options.negative_prompt or None
    return kwargs


class Generator:
    """Generates with one pipeline and its adapter stack, and writes down a recipe for every image."""

    def __init__(self, pipe, stack: AdapterStack | None = None, info: BaseInfo | None = None, *,
                 progress: bool = False):  # fmt: skip
        """``progress``: diffusers' progress bar for each image (on stderr); off, nothing is drawn."""
        self.pipe = pipe
        self.progress = progress
        self.stack = stack or AdapterStack(pipe)
        self.info = info or base_info(pipe) or BaseInfo("pipeline", "pipeline", "pipeline", pipeline_family(pipe))
        self._pipes: dict[str, Any] = {"txt2img": pipe}
        self._digest: str | None = None

    def _pipeline(self, mode: str):
        if mode not in self._pipes:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            cls = AutoPipelineForImage2Image if mode == "img2img" else AutoPipelineForInpainting
            self._pipes[mode] = cls.from_pipe(self.pipe)  # shares the (patched) modules: no copy
            self._pipes[mode].set_progress_bar_config(disable=not self.progress, leave=False)
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
        """Settings left unset take the base's own (``lorastack.json``, else its family's)."""
        from .base_settings import pipe_settings

        if options.guidance is None:
            guidance = self.info.recommended.get("guidance", pipe_settings(self.pipe).guidance)
            options = replace(options, guidance=guidance)
        return options

    def _load_by_name(self, name: str) -> None:
        """A prompt tag naming an adapter that is not loaded: load it from the registry (or a file) by that name."""
        from .sources import find_adapter

        try:
            found = find_adapter(name)
            self.stack.load(name, found.path, label=found.label, trigger_words=found.trigger_words)
        except (UnknownAdapterError, AdapterError) as e:
            misread = misread_scale(name, e)
            if misread is not None:
                raise misread from None
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
                self._bar(f"image {i + 1}/{options.num_images}")
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
        cells = options.num_images * len(columns)
        for i in range(options.num_images):
            row = []
            for c, ((label, column_stack), cell_prompt) in enumerate(zip(columns, prompts)):
                self._bar(f"{label} {i * len(columns) + c + 1}/{cells}")
                with self.stack.activated(column_stack):
                    row.append(self._run(mode, cell_prompt, options, width, height, seed + i, images))
            rows.append(row)
        # from what the recipe records (the base column's prompt has no trigger words): reproduce draws the same
        caption = f"{prompts[0]}  |  steps {options.steps}, guidance {options.guidance:g}"
        labels = ["base"] + [f"{name} @ {_scale_text(scale, self.info.family)}" for name, scale in stack.items()]
        if len(stack) > 1:
            labels.append("all: " + ", ".join(labels[1:]))
        rows_labels = [f"seed {seed + i}" for i in range(options.num_images)]
        grid = labelled_grid(rows, labels, rows_labels, caption)
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

    def _bar(self, desc: str) -> None:
        """diffusers' own progress bar for the next image, only when asked for (a terminal: the CLI decides)."""
        for pipe in self._pipes.values():
            pipe.set_progress_bar_config(disable=not self.progress, desc=desc, leave=False)

    def _run(self, mode, prompt, options, width, height, seed, images):
        pipe = self._pipeline(mode)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        kwargs: dict[str, Any] = dict(
            prompt=prompt,
            num_inference_steps=options.steps,
            guidance_scale=options.guidance,
            generator=generator,
            **family_kwargs(self.pipe, options),
            **images,
        )
        if mode == "img2img":
            kwargs["strength"] = options.strength
            if _takes(pipe, "width"):  # Flux img2img draws at its default 1024 px unless told the size
                kwargs.update(width=width, height=height)
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
                **({"components": info.extra["components"]} if info.extra.get("components") else {}),
                **({"t5_tokenizer": info.extra["t5_tokenizer"]} if info.extra.get("t5_tokenizer") else {}),
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


def _scale_text(scale: Any, family: str | None = None) -> str:
    """A scale as a grid label shows it: ``0.8``, or a dict's values (``unet 1, text_encoder 0.5``). With
    ``family``, components the base lacks are left out and text encoders at one strength read ``te``."""
    if isinstance(scale, (int, float)):
        return f"{scale:g}"
    if not isinstance(scale, dict):
        return str(scale)
    items = dict(scale)
    if family in FAMILY_TABLE:
        own = FAMILY_TABLE[family].components
        items = {k: v for k, v in items.items() if k in own or k not in ALL_COMPONENTS}
        te = [items[c] for c in FAMILY_TABLE[family].text_encoders if c in items]
        if len(te) > 1 and all(v == te[0] for v in te):
            items = {k: v for k, v in items.items() if k not in FAMILY_TABLE[family].text_encoders}
            items["te"] = te[0]
    return ", ".join(f"{k} {v}" if isinstance(v, str) else f"{k} {_scale_text(v)}" for k, v in items.items())


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
