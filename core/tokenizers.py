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

from .config import cache_dir

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_tokenizer_dir() -> Path:
    """A folder with CLIP's ``vocab.json`` and ``merges.txt`` (49,408 tokens), written on first use."""
    folder = cache_dir() / "clip-tokenizer"
    if (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        return folder
    text = gzip.decompress((resources.files("lorastack.core") / "configs" / "clip" / "merges.txt.gz").read_bytes())
    merges = text.decode("utf-8").splitlines()[1:]
    base = list(_bytes_to_unicode().values())
    vocab = base + [b + "</w>" for b in base] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    folder.mkdir(parents=True, exist_ok=True)
    tmp_vocab, tmp_merges = folder / "vocab.json.tmp", folder / "merges.txt.tmp"
    tmp_vocab.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    tmp_merges.write_bytes(text)
    tmp_merges.replace(folder / "merges.txt")
    tmp_vocab.replace(folder / "vocab.json")
    return folder


def clip_tokenizer(pad_token: str = EOS):
    """CLIP's tokenizer. SD 2.x and SDXL's second tokenizer pad with ``"!"``, SD 1.x with the end token."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(clip_tokenizer_dir()), model_max_length=77, pad_token=pad_token)
