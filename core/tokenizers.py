"""The real CLIP tokenizer, built offline from the merges lorastack ships.

Single-file checkpoints carry no tokenizer, and diffusers would download one. CLIP's vocabulary is derived from its
BPE merges (see ``tools/make_clip_merges.py``), so lorastack ships those (200 KB) and writes ``vocab.json`` and
``merges.txt`` into its cache once.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

from lorastack.adapters.outputs import atomic_write_bytes

from .config import cache_dir

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def clip_tokenizer_dir() -> Path:
    """A folder with CLIP's ``vocab.json`` and ``merges.txt`` (49,408 tokens), written on first use."""
    folder = cache_dir() / "clip-tokenizer"
    if (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        return folder
    text = gzip.decompress((resources.files("lorastack.core") / "configs" / "clip" / "merges.txt.gz").read_bytes())
    merges = text.decode("utf-8").splitlines()[1:]
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2/CLIP's byte table

    base = list(bytes_to_unicode().values())
    vocab = base + [b + "</w>" for b in base] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    folder.mkdir(parents=True, exist_ok=True)
    # merges first: the folder counts as built once vocab.json is there too (a cache: no fsync)
    atomic_write_bytes(folder / "merges.txt", text, durable=False)
    vocab_json = json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False).encode("utf-8")
    atomic_write_bytes(folder / "vocab.json", vocab_json, durable=False)
    return folder


def clip_tokenizer(pad_token: str = EOS):
    """CLIP's tokenizer. SD 2.x and SDXL's second tokenizer pad with ``"!"``, SD 1.x with the end token."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(clip_tokenizer_dir()), model_max_length=77, pad_token=pad_token)
