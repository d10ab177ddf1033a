"""What ``lorastack generate`` and ``lorastack reproduce`` do, end to end, callable from Python.

The command line parses options and prints; everything else is here: the base and the adapters are resolved from
what the user typed (paths, registry references, built-in names, ``<lora:…>`` tags), every input is checked before
any model loads, the device defaults to the best one present, and outputs are named and written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import GenerationError, UnknownAdapterError
from .generate import GenerateOptions, Generator, check_image_file, check_options
from .prompts import extract_tags, misread_scale
from .stack import AdapterStack


@dataclass
class BaseChoice:
    """Which base to load and how (``device=None``: :func:`lorastack.core.devices.best_device`)."""

    source: str | None = None  # None: default_base from the user config
    device: str | None = None
    dtype: str = "fp32"
    config: str | Path | None = None  # a diffusers folder describing a single-file base
    prediction_type: str | None = None
    allow_pickle: bool = False
    attention_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False
    components: dict[str, Any] = field(default_factory=dict)  # load_base's text_encoder=, …, t5_tokenizer= files
    apply: str = "auto"  # how adapters apply: merge, bypass, or auto (bypass for quantized/offloaded layers)
    compile: bool = False  # torch.compile the denoiser once (adapter changes then recompile nothing)
    quantize: str | None = None  # load the denoiser quantized (lorastack.core.quantized.QUANTIZATIONS)


@dataclass
class SavedImage:
    path: Path
    seed: int
    columns: list[str] | None = None  # a comparison grid's columns


@dataclass
class GenerateRun:
    """What a generation wrote: the images, and what they were made with."""

    images: list[SavedImage]
    base: str
    device: str
    adapters: dict[str, str] = field(default_factory=dict)  # name → source label (a registry reference or a path)
    warnings: list[str] = field(default_factory=list)
    apply: dict[str, Any] = field(default_factory=dict)  # AdapterStack.apply_report(): the mode of every layer

    def to_json(self) -> dict[str, Any]:
        return {
            "images": [
                {"path": str(i.path), "seed": i.seed, **({"columns": i.columns} if i.columns else {})}
                for i in self.images
            ],
            "base": self.base,
            "device": self.device,
            "adapters": self.adapters,
            "warnings": self.warnings,
            "apply": {k: v for k, v in self.apply.items() if k != "layers"},
        }


def generate_to_folder(
    options: GenerateOptions,
    output: str | Path,
    *,
    base: BaseChoice | None = None,
    loras: Sequence[str] = (),
    compare: bool = False,
    progress: bool = False,
    warn: Callable[[str], None] | None = None,
    stacks: Sequence[str] = (),
) -> GenerateRun:
    """Generate what ``options`` asks for with ``loras`` (``[NAME=]SOURCE[:SCALE]`` each) and save the PNGs in
    ``output`` (made if missing), each named ``NNNNN-SEED.png`` (``NNNNN-SEED-compare.png`` for a grid), numbered
    past what the folder holds.

    ``options.adapters`` is filled from ``loras``. ``warn`` receives one line per adapter that only partly matched.
    ``stacks``: named stacks (``lorastack stack save``) whose adapters come first and whose prompt text is added.
    """
    from lorastack.adapters.errors import AdapterError
    from lorastack.adapters.outputs import check_output_dir
    from lorastack.paths import data_home

    from .base import load_base
    from .config import default_base
    from .devices import best_device
    from .recipe import next_free, save_png
    from .sources import find_adapter, parse_lora_option, unique_names

    base = base or BaseChoice()
    source = base.source or default_base()
    if not source:
        raise GenerationError("no base: give --base (a folder, checkpoint, Hub id or alias) or set default_base")
    # everything is checked before any model loads: the home (registry, caches), numbers, tags, inputs, the output
    data_home()
    requests = unique_names([*_stack_requests(stacks, options), *(parse_lora_option(v) for v in loras)])
    options.adapters = {**options.adapters, **{r.name: r.scale for r in requests}}
    for path, what in ((options.init_image, "init image"), (options.mask, "mask")):
        if path is not None:
            check_image_file(path, what)  # a missing file is reported before a mask without an init image
    check_options(options)
    output = Path(output)
    check_output_dir(output)  # missing folders are made (mkdir -p) once the images are ready
    found = {r.name: find_adapter(r.source) for r in requests}
    for name in extract_tags(options.prompt)[1]:  # adapters named only in <lora:…> tags are found now too
        if name not in found:
            try:
                found[name] = find_adapter(name)
            except (UnknownAdapterError, AdapterError) as e:
                misread = misread_scale(name, e)
                if misread is not None:
                    raise misread from None
                given = ", ".join(r.name for r in requests) or "none"
                raise UnknownAdapterError(
                    f"adapter name(s) '{name}' not loaded; loaded adapters: {given} ({e})"
                ) from None
    device = base.device or best_device()
    pipe = load_base(
        source, device=device, dtype=base.dtype, config=base.config, prediction_type=base.prediction_type,
        allow_pickle=base.allow_pickle, attention_slicing=base.attention_slicing, vae_tiling=base.vae_tiling,
        cpu_offload=base.cpu_offload, quantize=base.quantize, **base.components,
    )  # fmt: skip
    generator = Generator(pipe, AdapterStack(pipe, mode=base.apply), progress=progress)
    run = GenerateRun([], source, device, {name: f.label for name, f in found.items()})
    for name, adapter in found.items():
        words = adapter.trigger_words
        report = generator.stack.load(
            name, adapter.path, allow_pickle=base.allow_pickle, label=adapter.label, trigger_words=words
        )
        if not report.complete:
            run.warnings.append(report.summary())
            if warn is not None:
                warn(report.summary())
    if base.compile:
        from .compiled import compile_denoiser

        compile_denoiser(generator.stack)
    run.apply = generator.stack.apply_report()
    results = [generator.compare(options)] if compare else generator.generate(options)
    output.mkdir(parents=True, exist_ok=True)
    for result in results:
        seed = result.recipe["seed"]
        path = save_png(result.image, next_free(output, f"{seed}-compare" if compare else str(seed)), result.recipe)
        run.images.append(SavedImage(path, seed, result.recipe["compare"]["columns"] if compare else None))
    return run


def _stack_requests(stacks: Sequence[str], options: GenerateOptions) -> list:
    """The adapters of the named stacks, as saved (``name@N``); their prompt text joins ``options``' own."""
    if not stacks:
        return []
    from lorastack.registry import Registry
    from lorastack.registry.stacks import get_stack

    from .sources import AdapterRequest

    registry, requests = Registry(), []
    for name in stacks:
        stack = get_stack(registry, name)
        requests += [AdapterRequest(a.name, a.ref, a.scale) for a in stack.adapters]
        if stack.prompt:
            options.prompt = ", ".join(p for p in (options.prompt, stack.prompt) if p)
        if stack.negative_prompt:
            options.negative_prompt = ", ".join(p for p in (options.negative_prompt, stack.negative_prompt) if p)
    return requests


@dataclass
class ReproduceRun:
    output: Path
    identical: bool
    max_difference: int
    seed: int
    device: str
    recipe: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "identical": self.identical,
            "max_difference": self.max_difference,
            "seed": self.seed,
            "device": self.device,
        }


def reproduce_to_file(
    image: str | Path,
    output: str | Path | None = None,
    *,
    base: str | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> ReproduceRun:
    """Make ``image`` again from its recipe and write it to ``output`` (default ``IMAGE-reproduced.png`` beside it).

    ``device=None``: the device the recipe records when it is present here (the same kernels give the same
    pixels), else the best one present. An existing ``output`` is replaced only with ``overwrite``.
    """
    from lorastack.adapters.outputs import check_output_file
    from lorastack.paths import data_home

    from .recipe import read_recipe, save_png
    from .recipe_import import read_chunks
    from .reproduce import reproduce, reproduce_foreign

    image = Path(image)
    data_home()  # the registry and caches: checked before any work
    output = Path(output) if output is not None else image.with_name(image.stem + "-reproduced.png")
    check_output_file(output, overwrite=overwrite)
    own = "lorastack" in read_chunks(image)  # else another tool's (A1111, ComfyUI): reproduce_foreign
    if device is None:
        device = _recorded_device(read_recipe(image).get("device") if own else None)
    if own:
        result = reproduce(image, base=base, device=device, progress=progress)
    else:
        result = reproduce_foreign(image, base=base, device=device, progress=progress)
    save_png(result.result.image, output, result.result.recipe)
    return ReproduceRun(
        output, result.identical, result.max_difference, result.recipe["seed"], device, result.result.recipe
    )


def _recorded_device(recorded: Any) -> str:
    import torch

    from .devices import best_device

    if isinstance(recorded, str):
        kind = recorded.split(":")[0]
        if kind == "cpu" or (kind == "cuda" and torch.cuda.is_available()):
            return kind
        mps = getattr(torch.backends, "mps", None)
        if kind == "mps" and mps is not None and mps.is_available():
            return kind
    return best_device()
