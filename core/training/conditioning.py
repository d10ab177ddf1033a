"""Text conditioning for training steps, exactly as each family's diffusers pipeline computes it.

SD1.x/SD2.x: one CLIP's last hidden states. SDXL: two CLIPs' penultimate states, the second's pooled projection, and
size/crop ids. FLUX.1: T5's last hidden states and CLIP-L's pooled output. SD3.x: CLIP-L and CLIP-G penultimate
states (concatenated, zero-padded to T5's width) stacked before T5's, and both CLIPs' pooled projections.

Written out rather than calling ``pipe.encode_prompt`` because training needs gradients for text-encoder LoRA and
none of the classifier-free-guidance batches, and because new tokens (pivotal tuning) are written out as their
vectors for the CLIP tokenizers only (``expand``), as the pipelines' ``maybe_convert_prompt`` does; T5 reads the
caption as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

#: the published trainers' T5 lengths: diffusers' Flux script (dev 512; schnell is limited to 256) and SD3 script
DEFAULT_T5_LENGTHS = {"flux": 512, "flux-schnell": 256, "sd3": 77}


def is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None and getattr(pipe, "unet", None) is not None


def _family(pipe) -> str:
    from lorastack.core.modules import pipeline_family

    return pipeline_family(pipe)


def _tokens(tokenizer, captions: Sequence[str], device, max_length: int | None = None) -> torch.Tensor:
    return tokenizer(
        list(captions), padding="max_length", max_length=max_length or tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)  # fmt: skip


def t5_length(pipe, requested: int | None = None) -> int:
    """T5 tokens per caption: ``requested``, else the family's published default; at most the tokenizer's."""
    family = _family(pipe)
    if requested is None:
        schnell = family == "flux" and not pipe.transformer.config.get("guidance_embeds")
        requested = DEFAULT_T5_LENGTHS["flux-schnell" if schnell else family]
    tokenizer = pipe.tokenizer_2 if family == "flux" else getattr(pipe, "tokenizer_3", None)
    most = getattr(tokenizer, "model_max_length", None) or requested
    return min(requested, most) if most < 10**6 else requested  # "unbounded" tokenizers say 1e30


def encode_captions(
    pipe,
    captions: Sequence[str],
    device,
    *,
    max_sequence_length: int | None = None,
    expand: Callable[[str], str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(hidden states, pooled)`` of ``captions`` for the family's denoiser (``pooled`` is ``None`` for SD1/SD2)."""
    clip = [expand(c) for c in captions] if expand is not None else list(captions)
    family = _family(pipe)
    if family == "flux":
        pooled = pipe.text_encoder(_tokens(pipe.tokenizer, clip, device), output_hidden_states=False).pooler_output
        ids = _tokens(pipe.tokenizer_2, captions, device, t5_length(pipe, max_sequence_length))
        return pipe.text_encoder_2(ids, output_hidden_states=False)[0], pooled
    if family == "sd3":
        return _sd3(pipe, clip, list(captions), device, t5_length(pipe, max_sequence_length))
    if not is_sdxl(pipe):
        hidden = pipe.text_encoder(_tokens(pipe.tokenizer, clip, device))[0]
        return hidden, None
    states, pooled = [], None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        out = encoder(_tokens(tokenizer, clip, device), output_hidden_states=True)
        pooled = out[0]  # the last encoder's projected pooled output is the one SDXL uses
        states.append(out.hidden_states[-2])
    return torch.cat(states, dim=-1), pooled


def _sd3(pipe, clip: list[str], captions: list[str], device, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    states, pooled = [], []
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        out = encoder(_tokens(tokenizer, clip, device), output_hidden_states=True)
        pooled.append(out[0])
        states.append(out.hidden_states[-2])
    clip_states = torch.cat(states, dim=-1)
    if getattr(pipe, "text_encoder_3", None) is not None:
        t5 = pipe.text_encoder_3(_tokens(pipe.tokenizer_3, captions, device, length))[0]
    else:  # SD3 without T5 (diffusers allows it): zeros in T5's place
        width = pipe.transformer.config.joint_attention_dim
        t5 = torch.zeros(len(captions), length, width, device=clip_states.device, dtype=clip_states.dtype)
    clip_states = torch.nn.functional.pad(clip_states, (0, t5.shape[-1] - clip_states.shape[-1]))
    return torch.cat([clip_states, t5.to(clip_states.dtype)], dim=-2), torch.cat(pooled, dim=-1)


def pipeline_kwargs(pipe, max_sequence_length: int | None = None) -> dict[str, int]:
    """What a sampling call of the pipeline needs besides the prompt: the T5 length of the transformer families."""
    return {"max_sequence_length": t5_length(pipe, max_sequence_length)} if _family(pipe) in ("flux", "sd3") else {}


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

    def __init__(self, folder, pipe, max_sequence_length: int | None = None):
        import hashlib
        import json
        from pathlib import Path

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pipe = pipe
        self.max_sequence_length = max_sequence_length
        identity = hashlib.sha256()
        if _family(pipe) in ("flux", "sd3"):  # the T5 length changes the hidden states' shape
            identity.update(f"t5:{t5_length(pipe, max_sequence_length)}".encode())
        pairs = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"), ("tokenizer_3", "text_encoder_3"))
        for tok_attr, enc_attr in pairs:
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
                hidden, pooled = encode_captions(self.pipe, missing, device,
                                                 max_sequence_length=self.max_sequence_length)  # fmt: skip
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
