"""What ``lorastack merge / resize / extract / bake`` do end to end, callable from Python.

Each run checks the output path before any work, reads and hashes its inputs, computes the result with its error
report, optionally generates with the original and the result (``check_prompts``), validates and writes the file
with its record in the header, and registers it when given a name. The returned dict is what ``--json`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arith import ArithmeticInputError, load_sources
from .arith_check import Side, compare, json_ready, parse_prompts
from .arith_result import Result, writable_format, write_result


@dataclass
class Check:
    """``--check-prompts`` settings."""

    prompts: str | None = None
    seed: int = 0
    steps: int = 20
    size: int | None = None


@dataclass
class Output:
    """Where and how a result is written."""

    path: Path
    fmt: str | None = None
    overwrite: bool = False
    name: str | None = None
    base: str | None = None
    base_components: dict[str, Any] = field(default_factory=dict)
    config: str | None = None  # a diffusers config folder describing a single-file base (load_base's config=)


def _check_output(out: Output) -> None:
    from lorastack.adapters.outputs import check_output_file
    from lorastack.registry.names import validate_name

    check_output_file(out.path, overwrite=out.overwrite)
    if out.name:
        validate_name(out.name)


def _load_base(source: str, components: dict[str, Any], config: str | None = None):
    from .base import load_base

    config = config if config is not None and Path(source).is_file() else None
    return load_base(source, device="cpu", dtype="fp32", config=config, **components)


def _base_weights(pipe, names) -> dict:
    from .modules import ModuleIndex

    index = ModuleIndex(pipe)
    return {n: index.get(n).weight.detach() for n in names if n in index}


def _finish(result: Result, out: Output, template, default_format: str) -> dict[str, Any]:
    fmt = writable_format(result.layers, out.fmt, default_format)
    written = write_result(result, out.path, fmt, template=template, name=out.name)
    data = json_ready(result.to_json())
    data.update(written)
    return data


def _check_adapters(pipe, originals: dict[str, tuple[Any, Any]], result: Result, check: Check) -> dict[str, Any]:
    """Generate with ``originals`` (name → (adapter, scale)) and with the result at 1 on the same base."""
    from .arith_result import result_adapter
    from .generate import Generator

    prompts = parse_prompts(check.prompts)
    generator = Generator(pipe)
    for name, (adapter, _) in originals.items():
        generator.stack.load(name, adapter, strict=False)
    generator.stack.load("arith-result", result_adapter(result), strict=False)
    reference = Side(generator, {name: scale for name, (_, scale) in originals.items()})
    candidate = Side(generator, {"arith-result": 1.0})
    return compare(reference, candidate, prompts, seed=check.seed, steps=check.steps, size=check.size)


def _need_base_for_check(check: Check, out: Output) -> None:
    if check.prompts and not out.base:
        raise ArithmeticInputError("--check-prompts generates on a base: give --base")
    parse_prompts(check.prompts)


def run_merge(inputs: list[str], out: Output, method: str = "concat", rank=None, density=None, seed: int = 0,
              check: Check | None = None) -> dict[str, Any]:  # fmt: skip
    from .merge import distance_to_sum, merge

    check = check or Check()
    _check_output(out)
    _need_base_for_check(check, out)
    sources = load_sources(inputs)
    pipe = weights = None
    if out.base:
        pipe = _load_base(out.base, out.base_components, out.config)
        weights = _base_weights(pipe, {n for s in sources for n in s.adapter.layers})
    result = merge(sources, method, rank=rank, density=density, base_weights=weights, seed=seed)
    if method not in ("concat", "svd"):
        result.settings["distance_to_weighted_sum"] = distance_to_sum(sources, result, weights)
    if check.prompts:
        originals = {f"input-{i}": (s.adapter, s.scale) for i, s in enumerate(sources)}
        result.check = json_ready(_check_adapters(pipe, originals, result, check))
    return _finish(result, out, sources[0].adapter, sources[0].adapter.source_format)


def run_resize(source: str, out: Output, rank=None, dynamic=None, target=None, check: Check | None = None):
    from .resize import resize

    check = check or Check()
    _check_output(out)
    _need_base_for_check(check, out)
    (src,) = load_sources([source])
    result = resize(src, rank, dynamic, target)
    if check.prompts:
        pipe = _load_base(out.base, out.base_components, out.config)
        result.check = json_ready(_check_adapters(pipe, {"input": (src.adapter, 1.0)}, result, check))
    return _finish(result, out, src.adapter, src.adapter.source_format)


def _model_record(source: str) -> dict[str, Any]:
    from lorastack.adapters import file_and_tensor_sha256

    path = Path(source)
    if path.is_file():
        file_hash, data_hash = file_and_tensor_sha256(path)
        return {"source": source, "sha256": file_hash, "tensor_sha256": data_hash}
    return {"source": source, "sha256": None, "tensor_sha256": None}


def run_extract(base: str, tuned: str, out: Output, *, rank=None, dynamic=None, target=None, components=None,
                clamp_quantile=None, min_diff: float = 0.0, check: Check | None = None):  # fmt: skip
    from .extract import extract
    from .generate import Generator

    check = check or Check()
    _check_output(out)
    parse_prompts(check.prompts)
    base_pipe = _load_base(base, out.base_components, out.config)
    tuned_pipe = _load_base(tuned, out.base_components, out.config)
    sources = [{**_model_record(base), "role": "base"}, {**_model_record(tuned), "role": "tuned"}]
    result = extract(
        base_pipe, tuned_pipe, rank=rank, dynamic=dynamic, target=target, components=components,
        clamp_quantile=clamp_quantile, min_diff=min_diff, sources=sources,
    )  # fmt: skip
    if check.prompts:
        from .arith_result import result_adapter

        with_lora = Generator(base_pipe)
        with_lora.stack.load("arith-result", result_adapter(result), strict=False)
        result.check = json_ready(
            compare(Side(Generator(tuned_pipe), {}), Side(with_lora, {"arith-result": 1.0}),
                    parse_prompts(check.prompts), seed=check.seed, steps=check.steps, size=check.size)
        )  # fmt: skip
    return _finish(result, out, None, "kohya")


def run_bake(base: str, loras: list[str], out: Output, *, blocks: str | None = None, as_lora: bool = False,
             rank=None, check: Check | None = None):  # fmt: skip
    from .bake import bake_lora, bake_model, load_stack

    check = check or Check()
    if rank is not None and not as_lora:
        raise ArithmeticInputError("--rank is for --as-lora (a baked model holds the stack exactly)")
    if out.fmt and not as_lora:
        raise ArithmeticInputError("--format is the adapter format of --as-lora; a baked model's form is -o's")
    if out.name and not as_lora:
        raise ArithmeticInputError("--name registers adapters; a baked model is not one (use --as-lora)")
    parse_prompts(check.prompts)
    if as_lora or out.path.suffix.lower() == ".safetensors":
        _check_output(out)
    pipe = _load_base(base, out.base_components, out.config)
    stack, scales, sources = load_stack(pipe, loras, blocks)
    if as_lora:
        result = bake_lora(stack, scales, sources, rank)
        if check.prompts:
            from .arith_result import result_adapter

            stack.load("arith-result", result_adapter(result), strict=False)
            from .generate import Generator

            generator = Generator(pipe, stack)
            result.check = json_ready(
                compare(Side(generator, scales), Side(generator, {"arith-result": 1.0}), parse_prompts(check.prompts),
                        seed=check.seed, steps=check.steps, size=check.size)
            )  # fmt: skip
        result.method = "bake --as-lora"
        return _finish(result, out, sources[0].adapter, sources[0].adapter.source_format)
    written = bake_model(pipe, stack, scales, sources, out.path, overwrite=out.overwrite)
    if check.prompts:
        from .generate import Generator

        baked = _load_base(str(out.path), out.base_components, out.config)
        stack.deactivate()
        written["check_prompts"] = json_ready(
            compare(Side(Generator(pipe, stack), scales), Side(Generator(baked), {}), parse_prompts(check.prompts),
                    seed=check.seed, steps=check.steps, size=check.size)
        )  # fmt: skip
    return written
