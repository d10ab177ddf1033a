"""A tiny, deterministic BLIP captioning checkpoint built offline, for testing captioners.

Real BLIP weights cannot be downloaded where lorastack is tested. ``make_tiny_blip`` writes a folder laid out like
``Salesforce/blip-image-captioning-base`` (config, safetensors weights, a ``BlipProcessor`` with a BERT WordPiece
tokenizer) that loads with ``BlipForConditionalGeneration.from_pretrained(path)`` and
``BlipProcessor.from_pretrained(path)``. Its weights are random: captions are gibberish, but they depend on the image
and are the same on every run.
"""

from __future__ import annotations

import string
from pathlib import Path

#: Whole-word tokens. Any other lower-case word still tokenizes, as single letters and ``##`` pieces.
DEFAULT_WORDS = (
    "a", "an", "the", "of", "on", "in", "with", "and", "photo", "picture", "painting", "red", "green", "blue",
    "white", "black", "circle", "square", "cat", "dog", "table", "sitting", "small", "large",
)  # fmt: skip
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")
IMAGE_SIZE = 32
# Larger than BLIP's 0.02 so that random weights give captions that differ from image to image.
INIT_RANGE = 0.2


def bert_vocab(words: tuple[str, ...] | list[str] = DEFAULT_WORDS) -> list[str]:
    """A WordPiece vocabulary: the special tokens, ``words``, every letter and digit alone and as ``##`` piece."""
    chars = string.ascii_lowercase + string.digits
    vocab = [*SPECIAL_TOKENS]
    for token in [*words, *chars, *(f"##{c}" for c in chars), *".,!?'-"]:
        if token not in vocab:
            vocab.append(token)
    return vocab


def make_tiny_blip(path: str | Path, seed: int = 0, words: tuple[str, ...] | list[str] = DEFAULT_WORDS) -> Path:
    """Write a tiny random-weight BLIP captioning model and its processor to ``path``; returns ``path``."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = bert_vocab(words)
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # [DEC] is BLIP's decoder start token (the real checkpoint's bos_token); special, so decoding drops it.
    tokenizer = BertTokenizer(str(vocab_file), bos_token="[DEC]", model_max_length=128)
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = BlipProcessor(image_processor, tokenizer)

    ids = {token: vocab.index(token) for token in SPECIAL_TOKENS}
    config = BlipConfig(
        text_config={
            "vocab_size": len(vocab), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 64, "max_position_embeddings": 128, "initializer_range": INIT_RANGE,
            "bos_token_id": ids["[DEC]"], "eos_token_id": ids["[SEP]"], "sep_token_id": ids["[SEP]"],
            "pad_token_id": ids["[PAD]"],
        },
        vision_config={
            "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
            "image_size": IMAGE_SIZE, "patch_size": 8, "initializer_range": INIT_RANGE,
        },
        projection_dim=32,
        image_text_hidden_size=32,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):  # do not disturb the caller's random state
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config).eval()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
