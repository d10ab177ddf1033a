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


def module_fingerprint(module, prefixes: tuple[str, ...] = ()) -> str:
    """A cheap identity of a model's weights for cache keys: its config, parameter shapes, and a few tensors' bytes."""
    import hashlib
    import json

    raw = (
        module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
    )  # transformers / diffusers
    config = {k: v for k, v in raw.items() if not str(k).startswith("_")}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    state = module.state_dict()
    names = sorted(n for n in state if n.startswith(prefixes)) if prefixes else sorted(state)
    names = names or sorted(state)
    digest.update(json.dumps([[n, list(state[n].shape), str(state[n].dtype)] for n in names]).encode())
    for name in sorted({names[0], names[len(names) // 2], names[-1]}):
        tensor = state[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(name.encode() + tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class TextCache:
    """Text-encoder outputs per caption, on disk and in memory, for runs whose text encoders do not train.

    Keyed by the caption and the identity of the tokenizers and encoders, so another base never hits; captions
    changed by dropout or tag shuffling are simply other keys. ``encodes`` counts text-encoder calls.
    """

    def __init__(self, folder, pipe):
        import hashlib
        import json
        from pathlib import Path

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pipe = pipe
        identity = hashlib.sha256()
        for tok_attr, enc_attr in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
            encoder = getattr(pipe, enc_attr, None)
            if encoder is not None:
                vocab = sorted(getattr(pipe, tok_attr).get_vocab().items())
                identity.update(module_fingerprint(encoder).encode())
                identity.update(hashlib.sha256(json.dumps(vocab).encode()).digest())
        self.identity = identity.hexdigest()
        self.memory: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.encodes = 0

    def _path(self, caption: str):
        import hashlib

        return self.folder / f"{hashlib.sha256((self.identity + caption).encode()).hexdigest()}.safetensors"

    def _load(self, caption: str) -> bool:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            data = load_file(self._path(caption))
        except (FileNotFoundError, SafetensorError, OSError):
            return False
        self.memory[caption] = (data["hidden"], data.get("pooled"))
        return True

    def _save(self, caption: str, hidden: torch.Tensor, pooled: torch.Tensor | None) -> None:
        from safetensors.torch import save_file

        from lorastack.adapters.outputs import atomic_path

        tensors = {"hidden": hidden.contiguous()}
        if pooled is not None:
            tensors["pooled"] = pooled.contiguous()
        with atomic_path(self._path(caption), durable=False) as tmp:  # a cache: a torn file is encoded again
            save_file(tensors, tmp)

    def encode(self, captions: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor | None]:
        missing = sorted({c for c in captions if c not in self.memory and not self._load(c)})
        if missing:
            with torch.no_grad():
                hidden, pooled = encode_captions(self.pipe, missing, device)
            self.encodes += 1
            for i, caption in enumerate(missing):
                h = hidden[i].detach().to("cpu", torch.float32)
                p = pooled[i].detach().to("cpu", torch.float32) if pooled is not None else None
                self._save(caption, h, p)
                self.memory[caption] = (h, p)
        hidden = torch.stack([self.memory[c][0] for c in captions]).to(device)
        first = self.memory[captions[0]][1]
        pooled = torch.stack([self.memory[c][1] for c in captions]).to(device) if first is not None else None
        return hidden, pooled
