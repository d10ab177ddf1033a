"""The device lorastack runs on when the user names none: the best one present."""

from __future__ import annotations

import torch


def best_device() -> str:
    """``"cuda"`` when torch sees a CUDA GPU, else ``"mps"`` on an Apple GPU, else ``"cpu"``."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"
