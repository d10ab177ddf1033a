"""The real CLIP tokenizer, built offline from the merges lorastack ships; T5's, found where it can be.

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


# --- T5 ----------------------------------------------------------------------------------------------------------

#: Hub repos whose cached snapshot holds the T5 v1.1 XXL tokenizer that FLUX.1 and SD3 use, and the folder in them
T5_TOKENIZER_REPOS = (
    ("black-forest-labs/FLUX.1-dev", "tokenizer_2"),
    ("black-forest-labs/FLUX.1-schnell", "tokenizer_2"),
    ("stabilityai/stable-diffusion-3.5-large", "tokenizer_3"),
    ("stabilityai/stable-diffusion-3.5-medium", "tokenizer_3"),
    ("stabilityai/stable-diffusion-3-medium-diffusers", "tokenizer_3"),
    ("google/t5-v1_1-xxl", ""),
)
_T5_FILES = ("tokenizer.json", "spiece.model")


def find_cached_t5_tokenizer(hf_cache_dir: str | Path | None = None) -> Path | None:
    """The T5 tokenizer folder of the first repo of :data:`T5_TOKENIZER_REPOS` in the huggingface_hub cache."""
    from huggingface_hub import try_to_load_from_cache

    for repo, sub in T5_TOKENIZER_REPOS:
        for name in _T5_FILES:
            try:
                found = try_to_load_from_cache(repo, f"{sub}/{name}" if sub else name, cache_dir=hf_cache_dir)
            except Exception:  # an unreadable cache is the same as an empty one here
                found = None
            if isinstance(found, str):
                return Path(found).parent
    return None


def load_t5_tokenizer(
    folder: str | Path | None, family: str, hf_cache_dir: str | Path | None = None, vocab_size: int | None = None
):
    """The T5 tokenizer from ``folder`` (``tokenizer.json`` or ``spiece.model``), else from the Hub cache.

    T5's tokenizer is a SentencePiece model that lorastack cannot ship or rebuild; a missing one is one line that
    says where to get it.
    """
    from transformers import T5TokenizerFast

    from .errors import BaseModelError

    label = {"flux": "FLUX.1", "sd3": "SD3"}.get(family, family)
    if folder is None:
        folder = find_cached_t5_tokenizer(hf_cache_dir)
        if folder is None:
            repos = ", ".join(repo for repo, _ in T5_TOKENIZER_REPOS[:1] + T5_TOKENIZER_REPOS[-1:])
            raise BaseModelError(
                f"a {label} single file needs the T5 tokenizer, which lorastack cannot ship: pass --t5-tokenizer "
                f"FOLDER (t5_tokenizer=; a folder with tokenizer.json or spiece.model, e.g. the tokenizer_2 folder "
                f"of FLUX.1-dev) or put {repos} in the Hugging Face cache"
            )
    folder = Path(folder).expanduser()
    if not folder.is_dir() or not any((folder / name).is_file() for name in _T5_FILES):
        raise BaseModelError(f"{folder}: not a T5 tokenizer folder (it needs tokenizer.json or spiece.model)")
    try:
        tokenizer = T5TokenizerFast.from_pretrained(str(folder))
    except Exception as e:  # transformers raises many types for a broken tokenizer folder
        raise BaseModelError(f"{folder}: cannot load the T5 tokenizer ({str(e).splitlines()[0][:120]})") from e
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise BaseModelError(
            f"{folder}: a tokenizer of {len(tokenizer)} tokens, more than the T5 encoder's {vocab_size}; "
            "it is not the tokenizer of this T5"
        )
    return tokenizer
