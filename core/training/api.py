"""``train()``: check everything, open the data, load the base, run the trainer plugin, register the result."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..interfaces import Trainer, optional_member
from .options import TrainingError, dump_recipe, load_recipe, recipe_fingerprint, resolve
from .progress import Progress
from .typed import TrainingOptions

log = logging.getLogger("lorastack.train")


@dataclass
class TrainingContext:
    """What a trainer plugin gets: the base pipeline, the dataset, the run folder and a way to start the engine."""

    pipe: Any
    base: str
    dataset: Any
    run: Any
    options: TrainingOptions  # typed: ``options.rank``; ``options["rank"]`` still reads for older trainers
    trainer: str
    name: str | None
    header: dict[str, str] = field(default_factory=dict)
    trigger_words: list[str] = field(default_factory=list)
    progress: bool = True
    on_step: Any = None  # called with (step, loss) after each optimizer step
    process: Any = None  # accelerate's process state under torchrun / accelerate launch

    def share(self, items: Sequence[Any]) -> list[Any]:
        """The part of ``items`` this process works on when the run was launched on several processes (a contiguous
        slice each; all of them with one process), such as class images to generate; ``wait_for_everyone()``
        before reading what the other processes made."""
        from .processes import local_positions

        items = list(items)
        if self.process is None or self.process.num_processes == 1:
            return items
        positions = local_positions(len(items), self.process.num_processes, self.process.process_index)
        return [items[i] for i in positions]

    def wait_for_everyone(self) -> None:
        """Wait until every process of the launch gets here (nothing with one process)."""
        if self.process is not None and self.process.num_processes > 1:
            self.process.wait_for_everyone()

    def status(self, message: str) -> None:
        """A status line on stderr (``generating 50 class images …``), unless the run is quiet."""
        if self.progress:
            print(message, file=sys.stderr, flush=True)

    def progress_bar(self, total: int, label: str) -> Progress:
        """A bar on a terminal, a line every few seconds elsewhere: ``update()`` per item, then ``close()``."""
        return Progress(total, label=label, enabled=self.progress)

    def sample_kwargs(self) -> dict[str, Any]:
        """What a call of the base pipeline needs besides prompt, size, steps and guidance: the T5 length of Flux
        and SD3 (``max_sequence_length``), nothing for the UNet families."""
        from .conditioning import pipeline_kwargs

        return pipeline_kwargs(self.pipe, self.options.get("max_sequence_length"))

    def engine(self, items, **kwargs):
        """An ``Engine`` over ``items`` (``DatasetItem``s) with this run's options; ``.train()`` runs it."""
        from .engine import Engine

        header = {**self.header, **kwargs.pop("header", {})}
        if self.trigger_words:
            header["modelspec.trigger_phrase"] = ", ".join(self.trigger_words)
        validation_count = self.options.validation_images
        items = list(items)
        if validation_count and "validation_items" not in kwargs:
            if validation_count >= len(items):
                raise TrainingError(
                    f"--validation-images {validation_count} leaves no image to train on ({len(items)} in all)"
                )
            kwargs["validation_items"] = items[-validation_count:]
            items = items[:-validation_count]
        return Engine(self.pipe, self.options, self.run, items, header=header, progress=self.progress,
                      on_step=self.on_step, **kwargs)  # fmt: skip


def default_run_dir(name: str | None, trainer: str) -> Path:
    from lorastack.paths import data_home

    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name or trainer).strip("-") or trainer
    return data_home() / "runs" / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(
    trainer: str,
    base: str | Path,
    data: str | Path,
    *,
    name: str | None = None,
    output: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    recipe: str | Path | None = None,
    resume: bool = False,
    source: str | None = None,
    source_options: Mapping[str, Any] | None = None,
    register: bool = True,
    progress: bool = True,
    pipe=None,
    on_step=None,
    base_components: Mapping[str, Any] | None = None,
):
    """Train an adapter with the trainer plugin ``trainer``; everything is checked before any model loads.

    ``options`` override the ``recipe`` file's. With ``name`` the adapter is imported into the registry as a new
    version of ``name`` with the run as its provenance. ``pipe`` reuses an already loaded base pipeline.
    ``base_components``: the files completing a FLUX.1 / SD3 single-file base (``load_base``'s ``text_encoder=``…).
    """
    from lorastack.core.data import open_dataset
    from lorastack.plugins.manager import get_trainer

    started = time.perf_counter()
    plugin = get_trainer(trainer)
    given = dict(load_recipe(recipe)) if recipe else {}
    for key in ("trainer", "base", "data", "name"):
        given.pop(key, None)
    given.update(options or {})
    settings = _settings(base, pipe)
    resolved = resolve(plugin.options, given, trainer, base_resolution=settings.resolution, family=settings.family)
    if given.get("resolution") is not None:
        from lorastack.core.base_settings import resolution_warning

        warning = resolution_warning(resolved.resolution, settings)
        if warning is not None:
            log.warning(warning)
    tag = None
    if name is not None:
        from lorastack.registry.names import parse_name_tag

        name, tag = parse_name_tag(name)
    check = optional_member(plugin, Trainer, "check")
    if check is not None:
        check(resolved)  # trainer-specific rules (a class without a token, …) before any work
    from .sharded import accelerate_shard, check_shard_options

    if resolved.shard == "none" and (asked := accelerate_shard()):  # accelerate launch with an FSDP config
        resolved = resolved.replace(shard=asked)
    if resolved.shard != "none":
        check_shard_options(resolved, trainer == "pivotal")
    from lorastack.core.evaluation_training import check_options as check_evaluation

    evaluation_settings = check_evaluation(resolved)  # evaluators, their metric, prompts: before any work
    if evaluation_settings and not resolved.checkpoint_every:  # the best checkpoint must be one that is kept
        resolved = resolved.replace(checkpoint_every=evaluation_settings["every"])
    if output is None and resume:
        raise TrainingError("--resume needs the run folder: pass --output RUN_DIR")
    # the outputs before any work: the home (caches, registry, default run folder) and the run folder
    from lorastack.adapters.outputs import check_output_dir
    from lorastack.paths import data_home

    from .processes import on_main, process_state

    data_home()
    # under accelerate launch / torchrun: the main process names the folder (a default one has the time in its name)
    state = process_state(resolved.device)
    if resolved.shard != "none" and state.num_processes == 1:
        log.warning("--shard %s splits a model between processes, and this run has one: it trains unsharded "
                    "(launch it with torchrun --nproc_per_node N or accelerate launch)", resolved.shard)  # fmt: skip
    run_dir = on_main(state, lambda: Path(output) if output is not None else default_run_dir(name, trainer))
    check_output_dir(run_dir)
    dataset = open_dataset(data, source, source_options)
    identity = {
        "trainer": trainer, "base": str(base), "data": str(data), "recipe": recipe_fingerprint(resolved),
    }  # fmt: skip
    if state.num_processes > 1:  # a step's batch is --batch-size x processes: resuming on another count differs
        identity["processes"] = state.num_processes
    from .run import RunFolder

    recipe_text = dump_recipe(resolved, {"trainer": trainer, "base": str(base), "data": str(data)})
    # only the main process creates and writes the run folder; the others open it once it exists
    run = on_main(state, lambda: RunFolder(run_dir, identity, recipe_text, resume=resume),
                  lambda _: RunFolder.join(run_dir, identity))  # fmt: skip
    if pipe is None:
        from lorastack.core.base import load_base

        pipe = load_base(base, **dict(base_components or {}))
    _check_objective(pipe, resolved, given, settings.family)
    if resolved.quantize_base != "none":
        quantize_base(pipe, base, resolved)
    header = {
        "modelspec.title": name or trainer,
        "ss_output_name": name or trainer,
        "ss_training_comment": f"trained by lorastack, trainer {trainer}",
        "ss_steps": str(resolved.steps),
        "ss_learning_rate": str(resolved.learning_rate),
        "ss_resolution": str(resolved.resolution),
        "ss_seed": str(resolved.seed),
        "ss_num_train_images": str(len(dataset.items)),
        "lorastack.trainer": trainer,
        "lorastack.recipe": recipe_text,
    }
    # the base's family, declared: the probe's topology rules hold for full-size models only (the toy base has
    # SDXL's topology), so an adapter trained here says what it was trained on
    architecture, version = base_architecture(pipe)
    header["modelspec.architecture"] = f"{architecture}/lora"
    header["ss_base_model_version"] = version
    base_id = str(base)
    hub_base = hub_base_id(pipe, base_id)
    if hub_base is not None or not Path(base_id).exists():
        header["ss_sd_model_name"] = hub_base or base_id
    context = TrainingContext(
        pipe, base_id, dataset, run, resolved, trainer, name, header, progress=progress and state.is_main_process,
        on_step=on_step, process=state,
    )  # fmt: skip
    evaluation = None
    if evaluation_settings:
        from lorastack.core.evaluation_training import start as start_evaluation

        evaluation = start_evaluation(context)  # the base scored now: step 0
        context.on_step = _chain(on_step, evaluation.on_step)
    result = plugin.train(context, resolved)
    if evaluation is not None:
        result.evaluation = evaluation.summary()
    if register and name is not None:
        result.registered = on_main(state, lambda: _register(result, run, context, name, tag, hub_base, base_id, data))
    if evaluation is not None and result.registered:
        from lorastack.registry import Registry

        evaluation.record(Registry(), result.registered)
    result.seconds = time.perf_counter() - started
    return result


def _chain(first, then):
    """``on_step`` callbacks called one after the other (``first`` may be ``None``)."""

    def both(step: int, loss: float) -> None:
        if first is not None:
            first(step, loss)
        then(step)

    return both


def _register(result, run, context, name, tag, hub_base, base_id, data) -> str:
    """Import the run's adapter into the registry as a new version of ``name``; its ref."""
    from lorastack.registry import Registry

    imported = Registry().import_file(
        result.adapter_path,
        name,
        tag,
        trigger_words=context.trigger_words or None,
        base_model=hub_base or (None if Path(base_id).exists() else base_id),
        provenance={
            "training": {
                "run": str(run.path),
                "trainer": context.trainer,
                "steps": result.steps,
                "base": base_id,
                "data": str(data),
            }
        },
    )
    return imported.version.ref


def quantize_base(pipe, base, options) -> None:
    """QLoRA: the pipeline's denoiser replaced by the same weights loaded quantized (``--quantize-base``), in the
    run's compute dtype; LoRA layers then train beside the frozen quantized weights (peft's bnb/torchao layers)."""
    from lorastack.core.base import base_info
    from lorastack.core.quantized import quantize_pipeline

    from .lora import denoiser_name

    info = base_info(pipe)
    folder = Path(info.location if info is not None and info.kind == "folder" else str(base))
    if not (folder / denoiser_name(pipe) / "config.json").is_file():
        raise TrainingError(f"--quantize-base {options.quantize_base} needs a diffusers-folder base; {str(base)!r} "
                            "is not one (convert a single file with lorastack's base tools first)")  # fmt: skip
    import torch

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(options.mixed_precision, torch.float32)
    getattr(pipe, denoiser_name(pipe)).to(dtype=dtype)  # quantize_pipeline loads in the current dtype
    quantize_pipeline(pipe, folder, options.quantize_base)


def _check_objective(pipe, options, given, guessed: str) -> None:
    """The objective's rules again with the loaded base's family, when the files read before loading guessed
    another (a Hub id neither cached nor named like its family)."""
    from lorastack.adapters.families import FAMILY_TABLE
    from lorastack.core.modules import pipeline_family

    from .flow import check_flow_options

    family = pipeline_family(pipe)
    if family != guessed:
        keys = {str(k).replace("-", "_") for k in given}
        check_flow_options(options, family, FAMILY_TABLE[family].objective == "flow", keys)


def base_architecture(pipe) -> tuple[str, str]:
    """``(ModelSpec architecture, kohya base version)`` of the pipeline's base, e.g. ``("flux-1-dev", "flux1")``:
    the family's (``adapters.metadata``), FLUX.1 schnell (no guidance embedding) told from dev as kohya does."""
    from lorastack.adapters.metadata import KOHYA_BASE_VERSIONS, MODELSPEC_ARCHITECTURES
    from lorastack.core.modules import pipeline_family

    family = pipeline_family(pipe)
    architecture = MODELSPEC_ARCHITECTURES[family]
    if family == "flux" and not pipe.transformer.config.get("guidance_embeds"):
        architecture = "flux-1-schnell"
    return architecture, KOHYA_BASE_VERSIONS[family]


def hub_base_id(pipe, base: str) -> str | None:
    """The Hub repo id of the base, for the model card's ``base_model``: the repo an alias or a name resolved to,
    or the repo of a folder inside the huggingface_hub cache (``models--owner--name/snapshots/…``)."""
    from lorastack.core.base import base_info

    info = base_info(pipe)
    if info is not None and info.kind == "hub":
        return info.location
    match = re.search(r"models--([\w.-]+?)--([\w.-]+)/snapshots/", str(info.location if info else base))
    return f"{match.group(1)}/{match.group(2)}" if match else None


def _settings(base, pipe):
    """The base's own settings: from the loaded pipeline when one is given, else read from the base's files."""
    from lorastack.core.base_settings import base_settings, pipe_settings

    return pipe_settings(pipe) if pipe is not None else base_settings(base)
