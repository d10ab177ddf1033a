"""Textual-inversion embeddings bundled in an adapter file (pivotal tuning: new tokens + LoRA).

The file keys are kohya's bundle convention, which A1111 reads: ``bundle_emb.TOKEN.string_to_param.*`` for the one
text encoder of SD1.x/SD2.x, ``bundle_emb.TOKEN.clip_l`` and ``bundle_emb.TOKEN.clip_g`` for SDXL's two. Each
tensor is ``n_vectors × hidden``. In canonical form: ``{token: {"text_encoder": tensor, "text_encoder_2": tensor}}``.
"""

from __future__ import annotations

import re

import torch

from .errors import InvalidAdapterError, quoted

PREFIX = "bundle_emb."
TOKEN_RULE = re.compile(r"^[A-Za-z0-9_<>\-]{1,64}$")
_COMPONENT = {"string_to_param.*": "text_encoder", "clip_l": "text_encoder", "clip_g": "text_encoder_2"}


def split_embeddings(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """``(the other tensors, embeddings)``; malformed bundle keys are an ``InvalidAdapterError`` naming the key."""
    rest: dict[str, torch.Tensor] = {}
    embeddings: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith(PREFIX):
            rest[key] = value
            continue
        token, _, field = key[len(PREFIX) :].partition(".")
        if not TOKEN_RULE.match(token) or field not in _COMPONENT:
            raise InvalidAdapterError(
                f"{quoted(key)} is not an embedding key (bundle_emb.TOKEN.clip_l|clip_g|string_to_param.*)"
            )
        if value.ndim == 1:
            value = value[None]
        if value.ndim != 2 or value.numel() == 0:
            raise InvalidAdapterError(
                f"{quoted(key)} has shape {tuple(value.shape)}; an embedding is vectors × hidden, neither of them 0"
            )
        if not value.is_floating_point():
            raise InvalidAdapterError(f"{quoted(key)} has dtype {value.dtype}; an embedding must be floating point")
        embeddings.setdefault(token, {})[_COMPONENT[field]] = value
    return rest, embeddings


def embedding_tensors(embeddings: dict[str, dict[str, torch.Tensor]], family: str | None) -> dict[str, torch.Tensor]:
    """The file keys for ``embeddings`` (SDXL names its encoders clip_l/clip_g; the others use string_to_param)."""
    out = {}
    for token, per_component in embeddings.items():
        for component, tensor in per_component.items():
            if family == "sdxl" or "text_encoder_2" in per_component:
                field = "clip_l" if component == "text_encoder" else "clip_g"
            else:
                field = "string_to_param.*"
            out[f"{PREFIX}{token}.{field}"] = tensor.detach().to("cpu", torch.float32).contiguous()
    return out


def diffusers_parts(path) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """An adapter file as what plain diffusers loads: ``(LoRA state dict, embeddings)``.

    diffusers' ``load_lora_weights`` refuses any key that is not a LoRA weight, so a file with bundled embeddings is
    loaded in two calls::

        lora, embeddings = diffusers_parts("aawxbc.safetensors")
        pipe.load_lora_weights(lora)
        for token, parts in embeddings.items():
            pipe.load_textual_inversion(parts["text_encoder"], token=token, tokenizer=pipe.tokenizer,
                                        text_encoder=pipe.text_encoder)
    """
    from .reading import read_adapter
    from .writing import diffusers_state_dict

    adapter = read_adapter(path)
    tensors, _ = diffusers_state_dict(adapter, adapter.family)
    return tensors, adapter.embeddings
