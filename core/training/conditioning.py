"""Text conditioning for training steps: SD1.x/SD2.x (one encoder) and SDXL (two, pooled, size/crop ids)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


def _tokens(tokenizer, captions: Sequence[str], device) -> torch.Tensor:
    return tokenizer(
        list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)  # fmt: skip


def encode_captions(pipe, captions: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(encoder_hidden_states, pooled)`` exactly as the diffusers pipelines compute them (``pooled`` for SDXL).

    Written out rather than calling ``pipe.encode_prompt`` because that runs without gradients and adds
    classifier-free-guidance batches; training needs neither.
    """
    if not is_sdxl(pipe):
        hidden = pipe.text_encoder(_tokens(pipe.tokenizer, captions, device))[0]
        return hidden, None
    states, pooled = [], None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        out = encoder(_tokens(tokenizer, captions, device), output_hidden_states=True)
        pooled = out[0]  # the last encoder's projected pooled output is the one SDXL uses
        states.append(out.hidden_states[-2])
    return torch.cat(states, dim=-1), pooled


def time_ids(original_sizes, crops, target_sizes, device, dtype) -> torch.Tensor:
    """SDXL's micro-conditioning: original size, crop top-left, target size, per example."""
    rows = [list(o) + list(c) + list(t) for o, c, t in zip(original_sizes, crops, target_sizes)]
    return torch.tensor(rows, device=device, dtype=dtype)
