"""Training on several processes (``accelerate launch``, ``torchrun``): one run folder, one model, one global batch.

* Only the main process creates and writes the run folder (``on_main``): the others wait for its outcome, then open
  the folder it made, or fail with its error, so ``accelerate launch`` never finds a folder "already holding a run"
  that another process of the same launch just made.
* Every module that holds a trainable parameter (the denoiser's LoRA, the text encoders' LoRA, new token rows) is
  put in one ``TrainedModules`` that ``accelerator.prepare`` wraps, so DDP (or FSDP) reduces all their gradients,
  and its forward is the step's loss.
* A step's global batch is ``--batch-size`` times the number of processes, drawn from the seed and the micro-batch
  number alone; each process takes a contiguous slice of it (``local_positions``), and its loss is weighted so the
  reduced gradient is that of the whole batch's mean: the model does not depend on how many processes trained it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

from ..errors import LorastackError
from .options import TrainingError

T = TypeVar("T")


def is_cpu(device: str | None) -> bool:
    """Whether a run on ``device`` (``None``: the best present) trains on the CPU (gloo, not NCCL)."""
    return device == "cpu" or (device is None and not torch.cuda.is_available())


def process_state(device: str | None):
    """accelerate's process state for a run on ``device``: under ``accelerate launch``/``torchrun`` this joins the
    process group (gloo on the CPU), with the same ``cpu`` choice the run's ``Accelerator`` makes later."""
    from accelerate import PartialState

    return PartialState(cpu=is_cpu(device))


def on_main(state, work: Callable[[], T], follow: Callable[[T | None], T] | None = None) -> T:
    """``work()`` on the main process only; every other process waits for it and gets its result (or its error, one
    line, as a ``TrainingError``). ``follow(result)`` runs on the other processes instead of taking the main's
    result as is (opening the folder the main process made). One process: ``work()``."""
    if state.num_processes == 1:
        return work()
    from accelerate.utils import broadcast_object_list

    outcome: list[Any] = [None]
    failure: BaseException | None = None
    if state.is_main_process:
        try:
            outcome = [("ok", work())]
        except Exception as e:  # the others must hear of it, or they would wait for ever
            failure = e
            outcome = [("error", str(e) if isinstance(e, LorastackError) else f"{type(e).__name__}: {e}")]
    broadcast_object_list(outcome, from_process=0)
    kind, value = outcome[0]
    if failure is not None:
        raise failure
    if kind == "error":
        raise TrainingError(f"{value} (reported by the main process)")
    return follow(value) if follow is not None and not state.is_main_process else value


def local_positions(count: int, processes: int, index: int) -> list[int]:
    """The positions in a global batch of ``count`` that process ``index`` of ``processes`` computes: contiguous,
    sizes differing by one at most (the first ``count % processes`` processes take one more)."""
    size, extra = divmod(count, processes)
    start = index * size + min(index, extra)
    return list(range(start, start + size + (index < extra)))


class TrainedModules(torch.nn.Module):
    """The modules that hold the run's trainable parameters, as one module for ``accelerator.prepare``.

    DDP primes its gradient reducer in the wrapper's forward, so every trained module must run inside one wrapped
    forward: ``loss(*args)`` is the step's whole computation (text encoders, then the denoiser).
    """

    def __init__(self, modules: Mapping[str, torch.nn.Module], loss: Callable[..., torch.Tensor]):
        super().__init__()
        self.parts = torch.nn.ModuleDict(dict(modules))
        self._loss = loss

    def forward(self, *args: Any) -> torch.Tensor:
        return self._loss(*args)


def params_digest(params: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the trainable tensors (names, shapes, fp32 bytes): equal on every process of a synchronised run."""
    digest = hashlib.sha256()
    for name in sorted(params):
        tensor = params[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{list(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_agreement(accelerator, digest: str, step: int) -> None:
    """Stop the run on every process when the processes' trainable tensors differ (an unsynchronised parameter)."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object

    digests = gather_object([digest])
    if len(set(digests)) > 1:
        raise TrainingError(
            f"the {len(digests)} processes hold different adapters after step {step} (digests "
            f"{', '.join(d[:12] for d in digests)}): a trainable parameter is not synchronised; the run stopped"
        )
