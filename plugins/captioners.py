"""The built-in captioners: ``filename``, ``sidecar`` and ``blip``.

Written like a third-party plugin: from lorastack it imports ``lorastack.plugins.api`` only.

* ``filename``: the image's file name as words (``red_circle-02.png`` → ``red circle``);
* ``sidecar``: the caption an image already has (sidecar file or metadata row), and another captioner's for the
  images without one;
* ``blip``: a BLIP image-captioning model from transformers (``Salesforce/blip-image-captioning-base`` or a local
  checkpoint), optionally continuing a prefix such as ``a photo of aawxbc``.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lorastack.plugins.api import (
    IMAGE_SUFFIXES,
    CaptionError,
    DatasetItem,
    Option,
    PluginOptionError,
    UnknownNameError,
    get_captioner,
    hookimpl,
    parse_option_pairs,
    resolve_options,
)

PREFIX_HELP = "Text each caption starts with (a trigger phrase such as 'a photo of aawxbc')."


def _join(prefix: str | None, text: str | None) -> str | None:
    parts = [p.strip() for p in (prefix, text) if p and p.strip()]
    return " ".join(parts) or None


# --- filename -----------------------------------------------------------------------------------------------------

# A trailing counter: "-02", "_0001", " 3", "(2)", as cameras, exports and file managers add them.
_COUNTER = re.compile(r"(?:\s*\(\d+\)|[\s_.\-]+\d+)$")
_SEPARATORS = re.compile(r"[\s_\-]+")


def words_from_name(name: str) -> str | None:
    """``red_circle-02.png`` → ``red circle``: the stem without trailing counters, ``_``/``-`` as spaces."""
    stem = posixpath.splitext(posixpath.basename(name.replace("\\", "/")))[0]
    while (shorter := _COUNTER.sub("", stem)) != stem:
        stem = shorter
    text = _SEPARATORS.sub(" ", stem).strip()
    return None if not text or text.isdigit() else text


class FilenameCaptioner:
    name = "filename"
    description = "The file name as words: red_circle-02.png → 'red circle' (counters dropped, _ and - as spaces)."
    options = (
        Option("prefix", "str", help=PREFIX_HELP),
        Option("lowercase", "bool", default=False, help="Lower-case the words from the file name."),
    )

    def caption(self, items: Sequence[DatasetItem], options: Mapping[str, Any]) -> Iterator[str | None]:
        options = resolve_options(self.options, options, f"captioner {self.name!r}")
        for item in items:
            if item.path is not None:
                name = Path(item.path).name
            elif posixpath.splitext(item.source)[1].lower() in IMAGE_SUFFIXES:
                name = item.source  # a zip member
            else:
                name = ""  # a dataset row ("train[12]") has no file name
            # a name that is not valid UTF-8 decodes with surrogates, which no tokenizer takes: mark those bytes
            name = name.encode("utf-8", "replace").decode("utf-8")
            words = words_from_name(name) if name else None
            if words and options["lowercase"]:
                words = words.lower()
            yield _join(options["prefix"], words)


# --- sidecar ------------------------------------------------------------------------------------------------------


class SidecarCaptioner:
    name = "sidecar"
    description = "Keeps the captions images already have and fills the gaps with another captioner (--fill)."
    options = (
        Option("fill", "str", default="filename", help="Captioner for images without a caption ('none': leave them)."),
        Option("fill_options", "str", default="", help="Options of the fill captioner: 'KEY=VALUE;KEY=VALUE'."),
        Option("prefix", "str", help="Prefix for the fill captioner's captions (passed as its prefix option)."),
    )
    # lorastack passes this captioner the images that have captions too, not only the gaps
    reads_captions = True

    def caption(self, items: Sequence[DatasetItem], options: Mapping[str, Any]) -> Iterator[str | None]:
        options = resolve_options(self.options, options, f"captioner {self.name!r}")
        gaps = [item for item in items if not (item.caption or "").strip()]
        filled = None
        if options["fill"] not in ("none", ""):
            # checked (and called) now, so a bad fill option is an error before the first caption is asked for,
            # even when no image needs it
            captioner, fill_options = self._fill(options)
            if gaps:
                filled = iter(captioner.caption(gaps, fill_options))
        return self._captions(items, filled)

    def _fill(self, options: Mapping[str, Any]):
        owner = f"captioner {self.name!r}"
        name = options["fill"]
        if name == self.name:
            raise PluginOptionError(f"{owner}: --fill cannot be {self.name!r} itself")
        try:
            captioner = get_captioner(name)
        except UnknownNameError as e:
            raise PluginOptionError(f"{owner}: --fill: {e}") from None
        pairs = [p for p in options["fill_options"].split(";") if p.strip()]
        given: dict[str, Any] = parse_option_pairs(pairs, f"{owner} --fill-options")
        if options["prefix"] is not None:
            if "prefix" not in {o.name for o in captioner.options}:
                raise PluginOptionError(f"{owner}: the fill captioner {name!r} takes no prefix")
            given.setdefault("prefix", options["prefix"])
        return captioner, resolve_options(captioner.options, given, f"captioner {name!r}")

    @staticmethod
    def _captions(items, filled) -> Iterator[str | None]:
        # the fill captioner gets all the gaps at once (it may batch them) and is read as the gaps come
        for item in items:
            caption = (item.caption or "").strip()
            if caption:
                yield caption
            elif filled is None:
                yield None
            else:
                yield next(filled, None)


# --- blip ---------------------------------------------------------------------------------------------------------

DEFAULT_BLIP = "Salesforce/blip-image-captioning-base"
DTYPES = ("auto", "float32", "float16", "bfloat16")


class BlipCaptioner:
    name = "blip"
    description = "BLIP image captioning (transformers); continues --prefix when one is given."
    options = (
        Option("model", "str", default=DEFAULT_BLIP, help="BLIP captioning checkpoint: a folder or a Hub id."),
        Option("prefix", "str", help="Text BLIP continues, which each caption starts with ('a photo of aawxbc')."),
        Option("max_new_tokens", "int", default=30, minimum=1, help="The most tokens BLIP adds per caption."),
        Option("batch_size", "int", default=8, minimum=1, help="Images per forward pass."),
        Option("device", "str", default="auto", help="auto (cuda if there is one, else cpu), cpu, cuda, cuda:1, mps."),
        Option("dtype", "choice", default="auto", choices=DTYPES, help="auto: float16 on cuda, else float32."),
    )

    def caption(self, items: Sequence[DatasetItem], options: Mapping[str, Any]) -> Iterator[str | None]:
        options = resolve_options(self.options, options, f"captioner {self.name!r}")
        device, dtype = self._device(options)  # a bad device is an error before the model loads
        _check_model_path(options["model"])
        return self._captions(items, options, device, dtype)

    def _device(self, options: Mapping[str, Any]):
        import torch

        owner = f"captioner {self.name!r}"
        name = options["device"].strip().lower()
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            raise PluginOptionError(
                f"{owner}: --device {options['device']!r} is not a device (auto, cpu, cuda, cuda:1, mps)"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise PluginOptionError(f"{owner}: --device {options['device']!r}: this machine has no CUDA device")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise PluginOptionError(f"{owner}: --device {options['device']!r}: MPS is not available here")
        dtype = options["dtype"]
        if dtype == "auto":
            dtype = "float16" if device.type == "cuda" else "float32"
        return device, getattr(torch, dtype)

    def _captions(self, items, options, device, dtype) -> Iterator[str | None]:
        import torch

        model, processor = _load_blip(options["model"], device, dtype)
        prefix = (options["prefix"] or "").strip() or None
        size = options["batch_size"]
        for start in range(0, len(items), size):
            batch = items[start : start + size]
            inputs = processor(
                images=[item.image for item in batch],
                text=[prefix] * len(batch) if prefix else None,
                return_tensors="pt",
            )
            inputs = {k: v.to(device) for k, v in inputs.items()}
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            with torch.no_grad():
                generated = model.generate(**inputs, max_new_tokens=options["max_new_tokens"])
            # BLIP's output repeats the prompt: [DEC] for plain captioning, [DEC] + the prefix's tokens otherwise
            # (generate swaps [CLS] for [DEC] and drops the final [SEP])
            prompt = inputs["input_ids"].shape[1] - 1 if prefix else 1
            for row in generated:
                yield _decode(processor.tokenizer, row, prompt, prefix)


def _decode(tokenizer, row, prompt: int, prefix: str | None) -> str | None:
    """The caption in one output row: the user's own prefix text, then what BLIP added."""
    if not prefix:
        return tokenizer.decode(row, skip_special_tokens=True).strip() or None
    whole = tokenizer.decode(row[1:], skip_special_tokens=True).strip()
    given = tokenizer.decode(row[1:prompt], skip_special_tokens=True).strip()
    # decoding prompt and continuation together keeps a word piece that continues the prefix's last word attached
    if whole.startswith(given):
        added = whole[len(given) :]
    else:
        added = " " + tokenizer.decode(row[prompt:], skip_special_tokens=True)
    return (prefix + added).strip()


def _check_model_path(model: str) -> None:
    path = Path(model).expanduser()
    looks_like_path = model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1
    if not path.exists() and looks_like_path:
        raise CaptionError(f"BLIP checkpoint {model!r}: no such folder")
    if path.exists() and not path.is_dir():
        raise CaptionError(f"BLIP checkpoint {model!r} is a file; give the folder saved with save_pretrained")


def _load_blip(model: str, device, dtype):
    """The model (eval mode, on ``device``) and processor; a one-line ``CaptionError`` naming ``model`` otherwise."""
    from transformers import AutoConfig, BlipForConditionalGeneration, BlipProcessor

    try:
        config = AutoConfig.from_pretrained(model)
        if config.model_type != "blip":
            raise CaptionError(f"BLIP checkpoint {model!r} holds a {config.model_type!r} model, not BLIP")
        processor = BlipProcessor.from_pretrained(model)
        blip = BlipForConditionalGeneration.from_pretrained(model, config=config)
    except CaptionError:
        raise
    except Exception as e:  # transformers raises many kinds (offline, missing files, bad configs)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = ""
        if isinstance(e, OSError) and not Path(model).expanduser().exists():
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            hint = "; offline: " if offline else "; "
            hint += "download it first, or pass --option model=FOLDER with a saved checkpoint"
        raise CaptionError(f"cannot load the BLIP captioning model {model!r}: {first}{hint}") from None
    return blip.to(device=device, dtype=dtype).eval(), processor


@hookimpl
def register_captioners(register):
    register(FilenameCaptioner())
    register(SidecarCaptioner())
    register(BlipCaptioner())
