"""The training loop every trainer runs, on ``accelerate``, for every family: the family's objective (``flow``:
DDPM or flow matching) on its denoiser (``denoisers``: a UNet, FLUX.1's or SD3's transformer).

Every random choice of a step comes from the seed and the micro-batch number, never from a global RNG that would
have to be saved: which images (the micro-batch's seeded epoch order), and for each example, from a generator seeded
by ``(seed, micro-batch, position in the batch)``, its flip, crop and caption dropout, latent sample, noise and
timestep. So a run resumed from a checkpoint computes exactly the steps an uninterrupted run would, and under
``accelerate launch`` a global batch of ``--batch-size`` × processes is the same whatever the number of processes:
each process computes its slice of it (``processes``), and one model is trained.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..interfaces import DatasetItem
from .conditioning import encode_captions
from .denoisers import image_seq_len, predict
from .lora import MODEL_COMPONENTS, add_lora, denoiser_name, export_adapter, remove_lora, trainable_parameters
from .options import TrainingError
from .pictures import checkpoint_samples
from .processes import TrainedModules, check_agreement, local_positions, params_digest
from .progress import Progress
from .result import TrainResult
from .run import RunFolder

VALIDATION_TIMESTEPS = (100, 300, 500, 700, 900)


def _generator(seed: int, *parts: int) -> torch.Generator:
    value = seed
    for part in parts:
        value = (value * 1_000_003 + part + 1) % (2**63)
    return torch.Generator().manual_seed(value)


class Engine:
    """One training run: a pipeline with LoRA layers added, data, options, and a run folder for checkpoints."""

    def __init__(
        self,
        pipe,
        options: dict[str, Any],
        run: RunFolder,
        items: Sequence[DatasetItem],
        *,
        validation_items: Sequence[DatasetItem] = (),
        prior_items: Sequence[DatasetItem] = (),
        prior_weight: float = 1.0,
        header: dict[str, str] | None = None,
        progress: bool = True,
        on_step: Callable[[int, float], None] | None = None,
        extras=None,
    ):
        from .data import DataOptions, TrainingData

        if not items:
            raise TrainingError("the dataset has no usable image")
        self.pipe, self.options, self.run = pipe, options, run
        self.header = dict(header or {})
        self.progress, self.on_step = progress, on_step
        self.extras = extras  # more trainable parameters (new token embeddings for pivotal tuning)
        self.prior_weight = prior_weight
        data_options = DataOptions(
            resolution=options.resolution, center_crop=options.center_crop, random_flip=options.random_flip,
            buckets=options.buckets, caption_prefix=options.caption_prefix,
            caption_dropout=options.caption_dropout, shuffle_tags=options.shuffle_tags,
            keep_tokens=options.keep_tokens, repeats=options.repeats,
        )  # fmt: skip
        data_options.validate()
        self.data = TrainingData(list(items), data_options, options.seed)
        prior_options = DataOptions(**{**data_options.__dict__, "caption_dropout": 0.0, "caption_prefix": ""})
        self.prior = TrainingData(list(prior_items), prior_options, options.seed + 1) if prior_items else None
        self.validation = (
            TrainingData(
                list(validation_items),
                DataOptions(
                    **{**data_options.__dict__, "caption_dropout": 0.0, "random_flip": False, "shuffle_tags": False}
                ),
                options.seed,
            )
            if validation_items
            else None
        )
        self._epochs: dict[tuple[int, int], list[list[int]]] = {}
        self.cache = None
        self.text_cache = None

    # --- set-up -------------------------------------------------------------------------------------------------

    def _accelerator(self):
        from accelerate import Accelerator

        device = self.options.device
        mixed = self.options.mixed_precision
        cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
        if mixed == "fp16" and cpu:
            raise TrainingError("--mixed-precision fp16 needs a GPU; on the CPU use bf16 or no")
        trackers = None
        try:
            import tensorboard  # noqa: F401

            trackers = "tensorboard"
        except ImportError:
            pass
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedDataParallelKwargs

        # one process may train several runs (serve's worker, a script), each with its own mixed precision, and
        # accelerate refuses a second Accelerator that differs from its global state: reset it (not the processes')
        AcceleratorState._reset_state()

        # pivotal tuning trains the embeddings alone first: DDP must not wait for the LoRA's gradients then
        ddp = DistributedDataParallelKwargs(find_unused_parameters=self.extras is not None)
        return Accelerator(mixed_precision=mixed, cpu=cpu, log_with=trackers, project_dir=str(self.run.path),
                           kwargs_handlers=[ddp])  # fmt: skip

    def _optimizer(self, params: dict[str, torch.nn.Parameter]):
        embeddings = [p for n, p in params.items() if ".token_embeddings." in n]
        denoiser = self.denoiser + "."
        groups = [
            {"params": [p for n, p in params.items() if n.startswith(denoiser)], "lr": self.options.learning_rate},
            {"params": [p for n, p in params.items() if not n.startswith(denoiser) and ".token_embeddings." not in n],
             "lr": self.options.text_encoder_lr},
            # weight decay would pull new token vectors toward zero, away from the words they started from
            {"params": embeddings, "lr": getattr(self.extras, "learning_rate", 0.0), "weight_decay": 0.0},
        ]  # fmt: skip
        groups = [g for g in groups if g["params"]]
        kwargs = dict(weight_decay=self.options.weight_decay)
        if self.options.optimizer == "adamw8bit":
            try:
                import bitsandbytes as bnb
            except ImportError:
                raise TrainingError("--optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
            return bnb.optim.AdamW8bit(groups, **kwargs)
        return torch.optim.AdamW(groups, **kwargs)

    def _scheduler(self, optimizer):
        from diffusers.optimization import get_scheduler

        return get_scheduler(
            self.options.lr_scheduler, optimizer, num_warmup_steps=self.options.warmup_steps,
            num_training_steps=self.options.steps,
        )  # fmt: skip

    # --- data ---------------------------------------------------------------------------------------------------

    def _batch_indices(self, data, micro: int, key: int) -> list[int]:
        """The image indices of global micro-batch number ``micro``, walking epochs in their seeded orders."""
        batch_size = self.options.batch_size * self.accelerator.num_processes
        epoch = 0
        while True:
            batches = self._epochs.get((key, epoch))
            if batches is None:
                batches = self._epochs[(key, epoch)] = data.epoch_batches(epoch, batch_size)
            if micro < len(batches):
                return batches[micro]
            micro -= len(batches)
            epoch += 1

    def _latents(self, examples: list[dict], gens: list[torch.Generator]) -> torch.Tensor:
        """Scaled latents of the examples: a sample of the VAE's distribution (each from its generator), or its
        mean."""
        vae = self.pipe.vae
        if self.cache is not None:
            pairs = self.cache.distributions(examples)
            mean = torch.stack([m for m, _ in pairs]).to(self.device)
            std = torch.stack([s for _, s in pairs]).to(self.device)
        else:
            pixels = torch.stack([ex["pixels"] for ex in examples]).to(self.device, vae.dtype)
            with torch.no_grad():
                dist = vae.encode(pixels).latent_dist
            mean, std = dist.mean.float(), dist.std.float()
        if self.options.latents == "sample":
            noise = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in gens])
            mean = mean + std * noise.to(self.device)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (mean - shift) * vae.config.scaling_factor

    # --- the step -----------------------------------------------------------------------------------------------

    def _loss(self, examples: list[dict], gens: list[torch.Generator], timesteps: torch.Tensor | None = None):
        """Per-example loss (a vector) for a list of examples, each drawing its randomness from its own generator:
        the family's objective on the family's denoiser."""
        options = self.options
        latents = self._latents(examples, gens).float()
        shape = latents.shape[1:]
        noise = torch.stack([torch.randn(shape, generator=g) for g in gens])
        if options.noise_offset:
            offsets = torch.stack([torch.randn((shape[0], 1, 1), generator=g) for g in gens])
            noise = noise + options.noise_offset * offsets
        noise = noise.to(self.device)
        seq_len = image_seq_len(latents)
        if timesteps is None:
            timesteps = torch.cat([self.objective.draw_timesteps(g, seq_len) for g in gens])
        noised = self.objective.noised(latents, noise, None, seq_len, timesteps)
        hidden, pooled = self._conditioning([ex["caption"] for ex in examples])
        with self.accelerator.autocast():
            pred = predict(self.family, self.model, noised.noisy, noised.timesteps, hidden, pooled, examples,
                           guidance=self.guidance)  # fmt: skip
        loss = F.mse_loss(pred.float(), noised.target.float(), reduction="none")
        masks = [ex.get("mask") for ex in examples]
        if any(m is not None for m in masks):
            weights = torch.stack([
                F.interpolate(m[None, None].float(), size=loss.shape[-2:], mode="area")[0]
                if m is not None else torch.ones(1, *loss.shape[-2:])
                for m in masks
            ]).to(loss.device)  # fmt: skip
            loss = (loss * weights).sum(dim=(1, 2, 3)) / (weights.sum(dim=(1, 2, 3)) * loss.shape[1]).clamp_min(1e-8)
        else:
            loss = loss.mean(dim=(1, 2, 3))
        if noised.weights is not None:  # Min-SNR (DDPM) or the SD3 paper's σ weighting (flow)
            loss = loss * noised.weights.to(loss.device)
        return loss

    def _conditioning(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.text_cache is not None:
            hidden, pooled = self.text_cache.encode(captions, self.device)
            return hidden.to(self.text_dtype), pooled.to(self.text_dtype) if pooled is not None else None
        return encode_captions(self.pipe, captions, self.device, max_sequence_length=self.options.max_sequence_length,
                               expand=getattr(self.extras, "expand", None))  # fmt: skip

    def _part_loss(self, data, micro: int, key: int) -> torch.Tensor:
        """This process's share of the mean loss over global micro-batch ``micro``: the sum of its slice's losses
        times processes / batch size, so DDP's gradient average is the gradient of the whole batch's mean."""
        indices = self._batch_indices(data, micro, key)
        processes = self.accelerator.num_processes
        positions = local_positions(len(indices), processes, self.accelerator.process_index)
        weight = processes / len(indices)
        if not positions:  # a short batch at an epoch's end: compute one example at weight 0 (DDP needs a backward)
            positions, weight = [0], 0.0
        gens = [_generator(self.options.seed, micro, key, j) for j in positions]
        examples = [data.example(indices[j], g) for j, g in zip(positions, gens)]
        return self._loss(examples, gens).sum() * weight

    def _micro_loss(self, micro: int) -> torch.Tensor:
        loss = self._part_loss(self.data, micro, 0)
        if self.prior is not None:
            loss = loss + self.prior_weight * self._part_loss(self.prior, micro, 1)
        return loss

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """Mean loss on the held-out images at fixed timesteps and fixed noise: comparable across checkpoints."""
        if self.validation is None:
            return None
        total, count = 0.0, 0
        for index in range(len(self.validation.items)):
            g = _generator(self.options.seed, 10**9 + index)
            example = self.validation.example(index, g)
            for t in VALIDATION_TIMESTEPS:
                t = min(t, self.objective.steps - 1)
                total += float(self._loss([example], [_generator(self.options.seed, index, t)],
                                          torch.tensor([t])).mean())  # fmt: skip
                count += 1
        return total / count

    # --- run ----------------------------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        from lorastack.core.modules import pipeline_family

        from .flow import make_objective

        options = self.options
        self.family = pipeline_family(self.pipe)
        self.objective = make_objective(self.pipe, options)  # the family's: DDPM, or flow matching (Flux, SD3)
        transformer = getattr(self.pipe, "transformer", None)
        embeds = transformer is not None and transformer.config.get("guidance_embeds")
        self.guidance = options.guidance_scale if embeds else None  # FLUX.1 dev's guidance input; no CFG anywhere
        self.accelerator = self._accelerator()
        self.device = self.accelerator.device
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(options.mixed_precision, torch.float32)
        self.pipe.to(self.device)
        for component in MODEL_COMPONENTS:
            module = getattr(self.pipe, component, None)
            dtype = torch.float32 if component == "vae" else weight_dtype  # the SD VAEs overflow in fp16
            quantized = getattr(module, "is_quantized", False) or getattr(module, "_diffusers_hook", None)
            if module is not None and module.dtype != dtype and not quantized:  # a quantized base keeps its storage
                module.to(dtype=dtype)
        if options.cache_latents:
            if not options.center_crop:
                raise TrainingError("a random crop changes every step, so latents cannot be cached: pass "
                                    "--no-cache-latents or keep --center-crop")  # fmt: skip
            from lorastack.paths import data_home

            from .cache import LatentCache

            # one cache for every run: keyed by image bytes, geometry and VAE, so unchanged data never re-encodes
            self.cache = LatentCache(data_home() / "cache" / "latents", self.pipe.vae)
        self.text_dtype = weight_dtype
        if options.cache_text and options.text_encoder_lr == 0 and self.extras is None:
            from lorastack.paths import data_home

            from .conditioning import TextCache

            # frozen text encoders give the same output for the same caption: encode each caption once, ever
            self.text_cache = TextCache(data_home() / "cache" / "text", self.pipe, options.max_sequence_length)
        trained = add_lora(self.pipe, options)
        self.denoiser = denoiser_name(self.pipe)
        if options.gradient_checkpointing:
            getattr(self.pipe, self.denoiser).enable_gradient_checkpointing()
        params = trainable_parameters(trained)
        if self.extras is not None:
            for name, p in self.extras.parameters().items():
                params[name] = p.requires_grad_(True)  # add_lora froze the text encoders, these rows included
        self.model = getattr(self.pipe, self.denoiser)
        holders = {c: m for c in MODEL_COMPONENTS if (m := getattr(self.pipe, c, None)) is not None
                   and any(p.requires_grad for p in m.parameters())}  # fmt: skip
        trainable = TrainedModules(holders, self._micro_loss)
        self.sharded = None
        if self.accelerator.num_processes > 1 and options.shard != "none":
            from .sharded import Sharded, check_shard_options

            check_shard_options(options, self.extras is not None)
            self.sharded = Sharded(holders, options.shard)
            params = trainable_parameters(trained)  # the same parameters, now DTensors holding this process's shard
        elif self.accelerator.num_processes > 1:
            from torch.nn.parallel import DistributedDataParallel

            # the frozen base is the same on every process (the same files): DDP need not broadcast gigabytes of it
            # at the start, and cannot broadcast quantized tensor subclasses at all; only the trained ones sync
            frozen = [n for n, p in trainable.named_parameters() if not p.requires_grad]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                trainable, frozen + [n for n, _ in trainable.named_buffers()]
            )
        optimizer = self._optimizer(params)
        # stepped once per optimizer step, not prepared: accelerate would step it once per process, and here a step
        # is one global batch whatever the number of processes
        lr_scheduler = self._scheduler(optimizer)
        if self.sharded is None:
            self.step_model, optimizer = self.accelerator.prepare(trainable, optimizer)
        else:  # sharded in place: FSDP reduce-scatters the gradients itself
            self.step_model = trainable
        start, losses = self.run.restore(params, optimizer, lr_scheduler, self.sharded)
        if self.accelerator.trackers:
            self.accelerator.init_trackers("lorastack", config={k: str(v) for k, v in options.as_dict().items()})
        accumulation = options.gradient_accumulation
        main = self.accelerator.is_main_process
        bar = Progress(options.steps, label="step", initial=start, enabled=self.progress and main)
        try:
            for step in range(start, options.steps):
                for module in trained.values():
                    if not module.training:  # a checkpoint's or an evaluation's eval(); train() walks every module
                        module.train()
                total = 0.0
                if self.extras is not None:
                    self.extras.before_step(step, params)
                for micro in range(step * accumulation, (step + 1) * accumulation):
                    last = micro == (step + 1) * accumulation - 1
                    # gradients are reduced across processes once per optimizer step, after its last micro-batch
                    with contextlib.nullcontext() if last else self._no_sync():
                        loss = self.step_model(micro) / accumulation
                        # the whole batch's loss, the same on every process, so all of them stop together
                        reduced = float(self.accelerator.reduce(loss.detach(), "mean"))
                        if not math.isfinite(reduced):
                            raise TrainingError(
                                f"the loss became {reduced} at step {step + 1}; training stopped and the last good "
                                f"checkpoint is kept ({self.run.last_checkpoint() or 'none yet'}). Lower the "
                                "learning rate, or train with --mixed-precision bf16 or no"
                            )
                        self.accelerator.backward(loss)
                    total += reduced
                if options.max_grad_norm:
                    self._clip(params, options.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(total)
                done = step + 1
                if self.accelerator.trackers:
                    self.accelerator.log({"loss": total, "lr": lr_scheduler.get_last_lr()[0]}, step=done)
                bar.update(1, total)
                if self.on_step is not None:
                    self.on_step(done, total)
                if self._due(done):
                    self._checkpoint(done, trained, params, optimizer, lr_scheduler, losses)
        except torch.OutOfMemoryError:
            raise TrainingError(
                "out of memory: lower --batch-size or --resolution, pass --gradient-checkpointing, or use "
                f"--mixed-precision bf16; the last good checkpoint is kept ({self.run.last_checkpoint() or 'none'})"
            ) from None
        finally:
            bar.close()
        digest = params_digest(self._whole(params))
        if main:
            self.run.finish(losses)
        self.accelerator.wait_for_everyone()
        final = self.run.state if main else self.run.reload()
        adapter_path = self.run.adapter_path
        result = TrainResult(self.run.path, adapter_path, options.steps, losses, final.get("best"),
                             {int(k): v for k, v in final.get("validation", {}).items()},
                             encodes=getattr(self.cache, "encodes", 0),
                             text_encodes=getattr(self.text_cache, "encodes", 0),
                             processes=self.accelerator.num_processes, digest=digest)  # fmt: skip
        if self.sharded is not None:  # a sharded pipeline stays sharded: its modules are FSDP modules now
            result.shard, result.held = self.sharded.mode, self.sharded.held
        else:
            remove_lora(trained)
        if self.extras is not None:
            self.extras.close()
        if self.accelerator.trackers:
            self.accelerator.end_training()
        return result

    def _clip(self, params, max_norm: float) -> None:
        if self.sharded is not None:
            self.sharded.clip(params, max_norm)
        else:
            self.accelerator.clip_grad_norm_(list(params.values()), max_norm)

    def _no_sync(self):
        return self.sharded.no_sync() if self.sharded is not None else self.accelerator.no_sync(self.step_model)

    def _whole(self, params):
        """The trained tensors whole: gathered from every process's shard when sharded (every process calls it)."""
        return self.sharded.full(params) if self.sharded is not None else params

    def _due(self, done: int) -> bool:
        every = self.options.checkpoint_every
        return done == self.options.steps or (every and done % every == 0)

    def _checkpoint(self, done, trained, params, optimizer, lr_scheduler, losses) -> None:
        """Save checkpoint ``done``: the main process writes it, once every process holds the same tensors."""
        whole = self._whole(params)
        check_agreement(self.accelerator, params_digest(whole), done)
        for module in trained.values():
            module.eval()
        states = None if self.sharded is None else self.sharded.component_states(whole)
        adapter = export_adapter(trained, self.options.alpha, self.header, states)
        if self.extras is not None:
            self.extras.export(adapter)
        optimizer_state = optimizer if self.sharded is None else self.sharded.optimizer_state(optimizer)
        validation = self.validation_loss()
        # the pipeline's own modules, unwrapped: no process need join in, unless they are sharded (every one samples)
        samples = checkpoint_samples(self, done) if self.accelerator.is_main_process or self.sharded else None
        if self.accelerator.is_main_process:
            self.run.save_checkpoint(done, adapter, whole, optimizer_state, lr_scheduler, losses, validation,
                                     samples)  # fmt: skip
        self.accelerator.wait_for_everyone()
        if self.accelerator.trackers and validation is not None:
            self.accelerator.log({"validation_loss": validation}, step=done)
