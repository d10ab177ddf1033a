"""A tiny, deterministic CLIP tokenizer generated from a word list.

Real CLIP vocabularies cannot be downloaded where lorastack is tested, so the test models use a tokenizer
built here. It is a genuine byte-level BPE CLIP tokenizer: every byte has a token (so any prompt encodes and
decodes without UNK), and each listed word gets whole-word merges so it becomes a single token.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2/CLIP's byte table

#: Words that become single tokens. Anything else still tokenizes, byte by byte.
DEFAULT_WORDS = (
    "a", "an", "the", "of", "on", "in", "with", "and", "photo", "picture", "painting", "drawing", "style",
    "portrait", "cat", "dog", "figurine", "person", "man", "woman", "red", "green", "blue", "yellow", "purple",
    "orange", "white", "black", "gray", "circle", "square", "triangle", "star", "background", "small", "large",
)  # fmt: skip

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77


def clip_vocab_and_merges(words: tuple[str, ...] | list[str] = DEFAULT_WORDS) -> tuple[dict[str, int], list[str]]:
    """Build a CLIP BPE vocabulary and merge list in which each of ``words`` is one token."""
    base = list(bytes_to_unicode().values())
    # transformers 5 needs every byte both plain and word-final ("</w>"), or word-final bytes become UNK.
    vocab_list = base + [c + "</w>" for c in base]
    known = set(vocab_list)
    merges: list[str] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        # Merge the way BPE will: apply the merges made so far, best rank first, and add one for whatever pair is
        # left until the word is a single symbol. Appending (the lowest rank) never changes how earlier words
        # merge, and a pair another word already merges ("r e" of "red" inside "green") is built on, not fought.
        symbols = [*list(word[:-1]), word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = [(ranks.get(pair), i) for i, pair in enumerate(itertools.pairwise(symbols))]
            known_pairs = [(rank, i) for rank, i in pairs if rank is not None]
            if known_pairs:
                _, i = min(known_pairs)
            else:
                i = 0
                pair = (symbols[0], symbols[1])
                ranks[pair] = len(merges)
                merges.append(f"{pair[0]} {pair[1]}")
            merged = symbols[i] + symbols[i + 1]
            if merged not in known:  # every merge result must itself be in the vocabulary
                known.add(merged)
                vocab_list.append(merged)
            symbols[i : i + 2] = [merged]
    vocab_list += [BOS_TOKEN, EOS_TOKEN]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def write_clip_tokenizer(folder: str | Path, words: tuple[str, ...] | list[str] = DEFAULT_WORDS) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and a ``tokenizer_config.json`` loadable by ``CLIPTokenizer``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,  # without it the pipeline pads prompts to ~1e30 tokens
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def tiny_clip_tokenizer(folder: str | Path, words: tuple[str, ...] | list[str] = DEFAULT_WORDS):
    """Write the tokenizer files to ``folder`` and load them with ``CLIPTokenizer``."""
    from transformers import CLIPTokenizer

    # from_pretrained reads vocab.json/merges.txt under both transformers 4 (slow tokenizer) and 5.
    return CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder, words), model_max_length=MODEL_MAX_LENGTH)
