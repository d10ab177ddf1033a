"""New tokens trained as embeddings (textual inversion) next to a LoRA: the pivotal-tuning half of the engine.

The tokens are added with diffusers' ``load_textual_inversion`` (so the tokenizer and the embedding matrix are
exactly what the runtime builds when it loads the finished adapter), then the embedding module is wrapped so that
only the new rows are a trainable parameter: the base's rows are never touched and the optimizer state stays as
small as the new rows.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from ..embeddings import PAIRS, token_names
from .options import TrainingError


class _Extended(torch.nn.Module):
    """An embedding whose last rows come from a separate trainable parameter."""

    def __init__(self, base: torch.nn.Embedding, extra: torch.nn.Parameter):
        super().__init__()
        self.base = base
        self.extra = extra
        self.start = base.weight.shape[0] - extra.shape[0]

    @property
    def weight(self) -> torch.Tensor:  # what code reading get_input_embeddings().weight expects
        return self.base.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        weight = torch.cat([self.base.weight[: self.start], self.extra.to(self.base.weight.dtype)])
        return F.embedding(ids, weight)


class NewTokens:
    """``token`` as ``vectors`` new embedding vectors in every CLIP text encoder, initialised from ``init_word``.

    T5 (FLUX.1's second encoder, SD3's third) reads the token as the plain word: adapter files bundle CLIP
    embeddings only (kohya's ``clip_l``/``clip_g``), as diffusers' advanced Flux script does without
    ``--enable_t5_ti``. A pipeline without diffusers' textual-inversion support (SD3.x) is refused: it could not
    use the trained tokens.
    """

    def __init__(self, pipe, token: str, vectors: int, init_word: str, seed: int, learning_rate: float,
                 ti_steps: int):  # fmt: skip
        self.pipe, self.token, self.learning_rate, self.ti_steps = pipe, token, learning_rate, ti_steps
        self.names = token_names(token, vectors)
        self.parts: dict[str, tuple] = {}  # component → (encoder, original module, wrapper)
        if not hasattr(pipe, "load_textual_inversion"):
            raise TrainingError(f"pivotal tuning needs a pipeline that loads textual inversions, and "
                                f"{type(pipe).__name__} does not, so the new tokens could not be used; train lora "
                                "or dreambooth on this base")  # fmt: skip
        from .lora import text_components

        g = torch.Generator().manual_seed(seed)
        for component in text_components(pipe):
            tok_attr, enc_attr = PAIRS[component]
            tokenizer, encoder = getattr(pipe, tok_attr, None), getattr(pipe, enc_attr, None)
            if encoder is None:
                continue
            if any(name in tokenizer.get_vocab() for name in self.names):
                raise TrainingError(f"--token {token!r} is already in the tokenizer; pick a new rare word")
            table = encoder.get_input_embeddings().weight.detach().float()
            init = self._initial(tokenizer, table, init_word, vectors, g)
            pipe.load_textual_inversion(init.to(table.dtype), token=token, tokenizer=tokenizer, text_encoder=encoder)
            embeddings = encoder.get_input_embeddings()
            ids = tokenizer.convert_tokens_to_ids(self.names)
            start = embeddings.weight.shape[0] - vectors
            if ids != list(range(start, start + vectors)):  # diffusers appends the rows in token order
                raise TrainingError(f"unexpected token ids {ids} for {self.names}")
            extra = torch.nn.Parameter(embeddings.weight.detach()[start:].float().clone())
            wrapper = _Extended(embeddings, extra)
            encoder.set_input_embeddings(wrapper)
            self.parts[component] = (encoder, embeddings, wrapper)

    @staticmethod
    def _initial(tokenizer, table, init_word: str, vectors: int, g) -> torch.Tensor:
        ids = tokenizer(init_word, add_special_tokens=False).input_ids if init_word.strip() else []
        if ids:
            base = table[ids].mean(0)
        else:
            base = torch.randn(table.shape[1], generator=g) * table.std()
        noise = torch.randn(vectors, table.shape[1], generator=g) * table.std() * 0.01
        return base[None] + noise

    def expand(self, caption: str) -> str:
        """The caption with the token written out as its vectors (what the runtime's prompt conversion does)."""
        return re.sub(rf"(?<![\w]){re.escape(self.token)}(?![\w])", " ".join(self.names), caption)

    def parameters(self) -> dict[str, torch.nn.Parameter]:
        return {f"{c}.token_embeddings.{self.token}": part[2].extra for c, part in self.parts.items()}

    def before_step(self, step: int, lora_params: dict[str, torch.nn.Parameter]) -> None:
        """Embeddings alone for the first ``ti_steps`` steps, then LoRA joins (a function of the step: resumable)."""
        train_lora = step >= self.ti_steps
        for name, p in lora_params.items():
            if ".token_embeddings." not in name:
                p.requires_grad_(train_lora)

    def export(self, adapter) -> None:
        adapter.embeddings = {
            self.token: {c: part[2].extra.detach().to("cpu", torch.float32).clone() for c, part in self.parts.items()}
        }

    def close(self) -> None:
        """Put the original embedding modules back and take the tokens out of the pipeline again."""
        for component, (encoder, original, _) in self.parts.items():
            encoder.set_input_embeddings(original)
            tok_attr, _ = PAIRS[component]
            self.pipe.unload_textual_inversion(tokens=self.names, tokenizer=getattr(self.pipe, tok_attr),
                                               text_encoder=encoder)  # fmt: skip
        self.parts.clear()
