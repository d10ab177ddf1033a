"""Sharded training (``--shard fsdp|fsdp-grad-op``, or an ``accelerate launch`` FSDP config): FSDP2 over the
trained components, so each of N processes holds 1/N of the frozen base, of the gradients and of the optimizer state.

Why ``torch.distributed.fsdp.fully_shard`` by hand and not accelerate's FSDP plugin: accelerate turns FSDP on for
GPU process types only (on the CPU its state stays ``MULTI_CPU``), and its ``prepare`` shards the one module it is
given, while a run trains several roots (the denoiser and the CLIP text encoders) whose trained tensors the
checkpoint, the agreement digest and the export read whole. Here every block of a trained component (a UNet's
down/mid/up blocks, a transformer's blocks, a text encoder's layers) and then the component itself is one FSDP unit;
the full tensors are gathered for those three readers with ``DTensor.full_tensor`` (a collective: every process
joins in the same, sorted order), and a checkpoint holds full tensors, so a sharded run resumes sharded or not.

``fsdp`` frees each block's gathered weights after its forward (ZeRO-3); ``fsdp-grad-op`` keeps them until the
backward (ZeRO-2: the gradients and optimizer state sharded, less communication, more memory).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from .options import TrainingError

SHARD_CHOICES = ("none", "fsdp", "fsdp-grad-op")
#: the module lists whose entries are blocks (UNets, FLUX.1/SD3 transformers, CLIP/T5 encoders) and single blocks
_BLOCK_LISTS = ("down_blocks", "up_blocks", "transformer_blocks", "single_transformer_blocks", "layers", "block")
_SINGLE_BLOCKS = ("mid_block",)


def accelerate_shard(env: Mapping[str, str] = os.environ) -> str | None:
    """The shard mode an ``accelerate launch`` FSDP config asks for (``distributed_type: FSDP``, which the launcher
    passes on as ``ACCELERATE_USE_FSDP``/``FSDP_*``); ``None`` when it asks for none."""
    if env.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    version = env.get("FSDP_VERSION", "1")
    if version != "2":
        raise TrainingError(f"the accelerate config has fsdp_version: {version}; lorastack shards with FSDP2: set "
                            "fsdp_version: 2 (or pass --shard fsdp to torchrun)")  # fmt: skip
    reshard = env.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower()
    if reshard not in ("true", "false"):
        raise TrainingError(f"the accelerate config has fsdp_reshard_after_forward: {reshard}; valid values are "
                            "true (ZeRO-3) and false (ZeRO-2)")  # fmt: skip
    return "fsdp" if reshard == "true" else "fsdp-grad-op"


def check_shard_options(options, extras: bool) -> None:
    """What a sharded run cannot do, refused in one line before anything is sharded."""
    shard = options.shard
    if options.quantize_base != "none":
        raise TrainingError(f"--shard {shard} cannot shard a quantized base (--quantize-base "
                            f"{options.quantize_base}): train it with --shard none (DDP)")  # fmt: skip
    if options.optimizer == "adamw8bit":
        raise TrainingError(f"--shard {shard} shards the optimizer state, which 8-bit AdamW cannot hold: use "
                            "--optimizer adamw")  # fmt: skip
    if options.mixed_precision == "fp16":
        raise TrainingError(f"--shard {shard} trains in bf16 or fp32: pass --mixed-precision bf16 or no")
    if extras:
        raise TrainingError(f"--shard {shard} does not shard new token rows (pivotal tuning): train it with "
                            "--shard none (DDP)")  # fmt: skip


def block_units(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The outermost blocks of ``module``, in order: the entries of its block lists and its single blocks."""
    found: list[tuple[str, torch.nn.Module]] = []
    for name, child in module.named_modules():
        last = name.rsplit(".", 1)[-1]
        if isinstance(child, torch.nn.ModuleList) and last in _BLOCK_LISTS:
            found += [(f"{name}.{i}", block) for i, block in enumerate(child)]
        elif last in _SINGLE_BLOCKS:
            found.append((name, child))
    names = [n for n, _ in found]
    return [m for n, m in found if not any(n.startswith(other + ".") for other in names)]


def _roots(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The units that hold what the blocks leave, below the component: fully_shard changes a module's class, and
    both lorastack (a pipeline's family) and transformers (what a model records, such as the
    ``output_hidden_states`` SDXL's conditioning reads) tell models by their class name. So a model (diffusers' or
    transformers') and a module list are never units themselves: their children are, down to the modules whose
    parameters no block unit holds yet."""
    from diffusers import ModelMixin
    from torch.distributed.tensor import DTensor
    from transformers import PreTrainedModel

    if all(isinstance(p, DTensor) for p in module.parameters()):
        return []  # held by block units already (or no parameters at all)
    if isinstance(module, (PreTrainedModel, ModelMixin, torch.nn.ModuleList, torch.nn.ModuleDict)):
        own = [n for n, p in module.named_parameters(recurse=False) if not isinstance(p, DTensor)]
        if own:
            raise TrainingError(f"--shard cannot shard the parameter {own[0]!r} of a {type(module).__name__}: "
                                "train with --shard none (DDP)")  # fmt: skip
        return [root for child in module.children() for root in _roots(child)]
    return [module]


class Sharded:
    """The trained components of a run, sharded in place with FSDP2 (their parameters are DTensors afterwards)."""

    def __init__(self, components: Mapping[str, torch.nn.Module], mode: str):
        from torch.distributed.fsdp import fully_shard

        if mode not in SHARD_CHOICES[1:]:
            raise TrainingError(f"--shard {mode!r} is not a shard mode: {', '.join(SHARD_CHOICES)}")
        kwargs: dict[str, Any] = {"reshard_after_forward": mode == "fsdp"}
        self.mode = mode
        self.components = dict(components)
        self.units: list[torch.nn.Module] = []  # every FSDP unit: the blocks, then what they leave
        for module in self.components.values():
            for unit in [u for u in block_units(module) if any(p.numel() for p in u.parameters())]:
                fully_shard(unit, **kwargs)
                self.units.append(unit)
            for root in _roots(module):
                fully_shard(root, **kwargs)
                self.units.append(root)
        from torch.distributed.tensor import DTensor

        local = whole = 0
        for module in self.components.values():
            for p in module.parameters():
                whole += p.numel()
                local += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
        #: the share of the trained components' weights this process holds (1/N for N processes, about)
        self.held = local / max(whole, 1)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Accumulate gradients locally (a micro-batch that is not its step's last): no reduce-scatter."""
        for unit in self.units:
            unit.set_requires_gradient_sync(False, recurse=False)
        try:
            yield
        finally:
            for unit in self.units:
                unit.set_requires_gradient_sync(True, recurse=False)

    @staticmethod
    def clip(params: Mapping[str, torch.nn.Parameter], max_norm: float) -> None:
        """``clip_grad_norm_`` over sharded gradients: the total norm reduced over every process's shard."""
        from torch.distributed.tensor import DTensor
        from torch.nn.utils import clip_grads_with_norm_, get_total_norm

        grads = [p.grad for p in params.values() if p.grad is not None]
        if not grads:
            return
        total = get_total_norm(grads)
        if isinstance(total, DTensor):
            total = total.full_tensor()
        clip_grads_with_norm_(list(params.values()), max_norm, total)

    @staticmethod
    def full(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Name → the whole tensor, gathered from every process (each process must call this, in step)."""
        from torch.distributed.tensor import DTensor

        return {
            name: (t.full_tensor() if isinstance(t, DTensor) else t).detach()
            for name, t in sorted(params.items())
        }  # fmt: skip

    @staticmethod
    def component_states(full: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """``component.name`` tensors as one state dict per component (what the export reads)."""
        states: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in full.items():
            component, _, key = name.partition(".")
            states.setdefault(component, {})[key] = tensor
        return states

    @staticmethod
    def optimizer_state(optimizer) -> dict[str, Any]:
        """The optimizer's state dict with whole tensors: the one an unsharded run saves, so either resumes it."""
        from torch.distributed.tensor import DTensor

        state = optimizer.state_dict()
        whole = {}
        for index in sorted(state["state"]):
            whole[index] = {
                key: value.full_tensor() if isinstance(value, DTensor) else value
                for key, value in sorted(state["state"][index].items())
            }  # fmt: skip
        return {"state": whole, "param_groups": state["param_groups"]}

    @staticmethod
    def load(params: Mapping[str, torch.nn.Parameter], optimizer, saved_params, saved_optimizer) -> None:
        """A checkpoint's whole tensors into the sharded parameters and optimizer state (each process keeps its
        shard of them: every process read the same file, so nothing is sent)."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        def local(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            if not isinstance(like, DTensor):
                return full
            return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements,
                                     src_data_rank=None)  # fmt: skip

        with torch.no_grad():
            for name, p in params.items():
                p.copy_(local(saved_params[name], p))
        ordered = [p for group in optimizer.param_groups for p in group["params"]]
        state = {
            index: {
                key: local(value, ordered[index])
                if torch.is_tensor(value) and value.shape == ordered[index].shape else value
                for key, value in entry.items()
            }
            for index, entry in saved_optimizer["state"].items()
        }  # fmt: skip
        optimizer.load_state_dict({"state": state, "param_groups": saved_optimizer["param_groups"]})
