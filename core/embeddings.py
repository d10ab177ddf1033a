"""Adapters' bundled textual-inversion tokens in a pipeline: added on load, removed on unload.

Adding and removing go through diffusers' own ``load_textual_inversion`` / ``unload_textual_inversion``, so the
prompts of an ordinary diffusers pipeline call expand multi-vector tokens (``aawxbc`` → ``aawxbc aawxbc_1 …``) as
they do for any textual inversion.
"""

from __future__ import annotations

import torch

from .errors import IncompatibleAdapterError

PAIRS = {"text_encoder": ("tokenizer", "text_encoder"), "text_encoder_2": ("tokenizer_2", "text_encoder_2")}


def token_names(token: str, vectors: int) -> list[str]:
    """The tokens one embedding of ``vectors`` vectors occupies (diffusers' multi-vector naming)."""
    return [token] + [f"{token}_{i}" for i in range(1, vectors)]


def add_embeddings(pipe, name: str, embeddings: dict[str, dict[str, torch.Tensor]]) -> list[tuple[str, list[str]]]:
    """Add every token of an adapter to the pipeline; returns ``[(component, tokens)]`` for ``remove_embeddings``.

    Checks everything first: a token the tokenizer already has, an encoder the base lacks, a width that does not fit.
    """
    plan = []
    for token, per_component in embeddings.items():
        for component, tensor in per_component.items():
            tok_attr, enc_attr = PAIRS[component]
            tokenizer, encoder = getattr(pipe, tok_attr, None), getattr(pipe, enc_attr, None)
            if encoder is None or tokenizer is None:
                raise IncompatibleAdapterError(
                    f"adapter '{name}' has an embedding for {component}, which the base lacks"
                )
            width = encoder.get_input_embeddings().weight.shape[1]
            if tensor.shape[1] != width:
                raise IncompatibleAdapterError(
                    f"adapter '{name}': the embedding of {token!r} is {tensor.shape[1]} wide, {component} {width}"
                )
            names = token_names(token, tensor.shape[0])
            taken = [t for t in names if t in tokenizer.get_vocab()]
            if taken:
                raise IncompatibleAdapterError(
                    f"adapter '{name}' brings the token {taken[0]!r}, which the base's tokenizer already has "
                    "(is another adapter with it loaded?)"
                )
            plan.append((component, token, tensor, tokenizer, encoder, names))
    added = []
    for component, token, tensor, tokenizer, encoder, names in plan:
        weight = encoder.get_input_embeddings().weight
        pipe.load_textual_inversion(tensor.to(weight.device, weight.dtype), token=token, tokenizer=tokenizer,
                                    text_encoder=encoder)  # fmt: skip
        added.append((component, names))
    return added


def remove_embeddings(pipe, added: list[tuple[str, list[str]]]) -> None:
    for component, names in added:
        tok_attr, enc_attr = PAIRS[component]
        pipe.unload_textual_inversion(tokens=names, tokenizer=getattr(pipe, tok_attr),
                                      text_encoder=getattr(pipe, enc_attr))  # fmt: skip
