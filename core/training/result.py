"""What a training run returns (``TrainResult``): the run folder, the adapter, the losses and how it was trained."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .progress import smoothed_ends


@dataclass
class TrainResult:
    run_dir: Path
    adapter_path: Path
    steps: int
    losses: list[float]
    best_checkpoint: str | None = None
    validation_losses: dict[int, float] = field(default_factory=dict)
    registered: str | None = None
    encodes: int = 0  # VAE encode calls (latent cache misses)
    text_encodes: int = 0  # text-encoder calls of the text cache (misses)
    seconds: float = 0.0  # the whole run, from the checks to the registered adapter
    evaluation: dict | None = None  # --eval-every: the metric, the best checkpoint and its score
    processes: int = 1  # processes that trained it (accelerate launch / torchrun), each on a slice of every batch
    digest: str = ""  # sha256 of the trained tensors, checked equal on every process at each checkpoint
    shard: str = "none"  # --shard: how the processes split the model (none: each held it whole)
    held: float = 1.0  # the share of the trained components' weights each process held

    @property
    def loss_first(self) -> float:
        """The mean loss of the first tenth of the steps (one step's loss is mostly noise)."""
        return smoothed_ends(self.losses)[0]

    @property
    def loss_final(self) -> float:
        """The mean loss of the last tenth of the steps."""
        return smoothed_ends(self.losses)[1]
