"""The built-in evaluators: ``clip``, ``dino``, ``leakage`` and ``toy``.

Written like a third-party plugin: from lorastack it imports ``lorastack.plugins.api`` (and its own private helper
``_vision``) only.

* ``clip``: CLIP-T (prompt–image cosine similarity) on every image and CLIP-I (mean cosine similarity to the
  instance images) on the subject prompts' images, the DreamBooth paper's metrics;
* ``dino``: DINO ViT similarity to the instance images (the class token), the paper's subject-fidelity metric;
* ``leakage``: how far the adapter moves the images of prompts it should leave alone (those without its trigger
  words), against the base on the same seeds: the pixel difference and the CLIP image-feature distance;
* ``toy``: the toy world's colour score (``--base toy``): fidelity to the instance images' colours, the share of the
  colour a prompt names, and the colour change against the base on plain prompts. A real signal, offline.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from lorastack.plugins.api import (
    TOY_COLOURS,
    EvalRequest,
    Metric,
    Option,
    colour_shares,
    hookimpl,
    resolve_options,
)

from ._vision import MAX_BATCH, choose_device, image_embeddings, load, text_embeddings

DEFAULT_CLIP = "openai/clip-vit-base-patch32"  # the CLIP of the DreamBooth paper's CLIP-I and CLIP-T
DEFAULT_DINO = "facebook/dino-vits16"  # the paper's DINO ViT-S/16
_DEVICE = Option("device", "str", None, "auto, cpu, cuda, cuda:1, mps (default: the device the images were made on).")
_BATCH = Option("batch_size", "int", 16, "Images per forward pass.", minimum=1, maximum=MAX_BATCH)


def _pairwise(embeddings, reference) -> list[float]:
    """Each row's mean cosine similarity to the rows of ``reference`` (all unit length)."""
    return (embeddings @ reference.T).mean(dim=1).tolist()


class ClipEvaluator:
    name = "clip"
    description = "CLIP-T (prompt similarity) and CLIP-I (similarity to the instance images), transformers CLIP."
    options = (
        Option("model", "str", DEFAULT_CLIP, "CLIP model: a folder saved by save_pretrained, or a Hub id in the "
               "Hugging Face cache (never downloaded)."),
        _DEVICE, _BATCH,
    )  # fmt: skip
    metrics = (
        Metric("clip_t", True, "cosine similarity of the image and its prompt (CLIP-T)"),
        Metric("clip_i", True, "mean cosine similarity to the instance images (CLIP-I), subject prompts only"),
    )

    def score(self, request: EvalRequest, options: Mapping[str, Any]) -> list[dict[str, float | None]]:
        options = resolve_options(self.options, options, f"evaluator {self.name!r}")
        device = choose_device(options["device"], request.device)
        loaded = load("clip", options["model"], device, f"evaluator {self.name!r}", "--option clip.model")
        images = [i.image for i in request.images]
        pictures = image_embeddings("clip", loaded, images, device, options["batch_size"])
        prompts = sorted({i.prompt for i in request.images})
        texts = dict(zip(prompts, text_embeddings(loaded, prompts, device, options["batch_size"])))
        clip_i: list[float | None] = [None] * len(images)
        if request.instance_images:
            reference = image_embeddings("clip", loaded, request.instance_images, device, options["batch_size"])
            clip_i = _pairwise(pictures, reference)
        out = []
        for k, item in enumerate(request.images):
            out.append({
                "clip_t": float(pictures[k] @ texts[item.prompt]),
                "clip_i": clip_i[k] if item.subject else None,
            })  # fmt: skip
        return out


class DinoEvaluator:
    name = "dino"
    description = "DINO ViT similarity to the instance images (DreamBooth's subject fidelity), transformers."
    options = (
        Option("model", "str", DEFAULT_DINO, "DINO ViT model (ViT or Dinov2): a folder saved by save_pretrained, or "
               "a Hub id in the Hugging Face cache (never downloaded)."),
        _DEVICE, _BATCH,
    )  # fmt: skip
    metrics = (Metric("dino", True, "mean cosine similarity of DINO class tokens to the instance images"),)

    def score(self, request: EvalRequest, options: Mapping[str, Any]) -> list[dict[str, float | None]]:
        options = resolve_options(self.options, options, f"evaluator {self.name!r}")
        if not request.instance_images:
            return [{"dino": None} for _ in request.images]
        device = choose_device(options["device"], request.device)
        loaded = load("dino", options["model"], device, f"evaluator {self.name!r}", "--option dino.model")
        subject = [k for k, i in enumerate(request.images) if i.subject]
        out: list[dict[str, float | None]] = [{"dino": None} for _ in request.images]
        if not subject:
            return out
        reference = image_embeddings("dino", loaded, request.instance_images, device, options["batch_size"])
        pictures = image_embeddings("dino", loaded, [request.images[k].image for k in subject], device,
                                            options["batch_size"])  # fmt: skip
        for k, value in zip(subject, _pairwise(pictures, reference)):
            out[k] = {"dino": value}
        return out


def _pixels(image):
    import numpy as np

    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


class LeakageEvaluator:
    name = "leakage"
    description = "How far the adapter moves images of prompts it should leave alone, against the base's."
    options = (
        Option("model", "str", DEFAULT_CLIP, "CLIP model for the feature distance (a folder or a cached Hub id); "
               "'none': the pixel difference only."),
        _DEVICE, _BATCH,
    )  # fmt: skip
    metrics = (
        Metric("pixel", False, "mean absolute pixel difference to the base's image, 0–1"),
        Metric("feature", False, "1 − cosine similarity of CLIP image features to the base's image"),
    )

    def score(self, request: EvalRequest, options: Mapping[str, Any]) -> list[dict[str, float | None]]:
        options = resolve_options(self.options, options, f"evaluator {self.name!r}")
        plain = [k for k, i in enumerate(request.images) if not i.subject and i.base_image is not None]
        out: list[dict[str, float | None]] = [{} for _ in request.images]
        for k in plain:
            item = request.images[k]
            base = item.base_image.convert("RGB").resize(item.image.size)
            out[k]["pixel"] = float(abs(_pixels(item.image) - _pixels(base)).mean())
        if plain and options["model"].strip().lower() != "none":
            device = choose_device(options["device"], request.device)
            loaded = load("clip", options["model"], device, f"evaluator {self.name!r}",
                                  "--option leakage.model")  # fmt: skip
            size = options["batch_size"]
            mine = image_embeddings("clip", loaded, [request.images[k].image for k in plain], device, size)
            base = image_embeddings("clip", loaded, [request.images[k].base_image for k in plain], device, size)
            for k, a, b in zip(plain, mine, base):
                out[k]["feature"] = max(0.0, 1.0 - float(a @ b))
        return out


_TOY_WORDS = "|".join(sorted(TOY_COLOURS))
_NAMED_COLOUR = re.compile(rf"\b({_TOY_WORDS})\b(?!\s+background)", re.I)


def _foreground(shares: dict[str, float]) -> dict[str, float]:
    """The colour shares without the image's background (its most common colour)."""
    background = max(shares, key=shares.get)
    return {c: s for c, s in shares.items() if c != background}


class ToyEvaluator:
    name = "toy"
    description = "The toy world's colour scores (--base toy): fidelity, prompt colour, leakage. Offline."
    options = ()
    metrics = (
        Metric("fidelity", True, "share of the instance images' foreground colours the image covers, 0–1"),
        Metric("prompt", True, "share of pixels of the shape colour the prompt names, 0–1"),
        Metric("leak", False, "colour change against the base's image on a plain prompt (total variation), 0–1"),
    )

    def score(self, request: EvalRequest, options: Mapping[str, Any]) -> Sequence[dict[str, float | None]]:
        reference: dict[str, float] | None = None
        if request.instance_images:
            fronts = [_foreground(colour_shares(i)) for i in request.instance_images]
            reference = {c: sum(f.get(c, 0.0) for f in fronts) / len(fronts) for c in TOY_COLOURS}
        out = []
        for item in request.images:
            shares = colour_shares(item.image)
            scores: dict[str, float | None] = {}
            if item.subject and reference is not None:
                front = _foreground(shares)
                covered = sum(min(front.get(c, 0.0), s) for c, s in reference.items())
                scores["fidelity"] = covered / max(sum(reference.values()), 1e-9)
            named = _NAMED_COLOUR.search(item.prompt)
            if named is not None:
                scores["prompt"] = shares[named.group(1).lower()]
            if not item.subject and item.base_image is not None:
                base = colour_shares(item.base_image)
                scores["leak"] = 0.5 * sum(abs(shares[c] - base[c]) for c in shares)
            out.append(scores)
        return out


@hookimpl
def register_evaluators(register):
    register(ClipEvaluator())
    register(DinoEvaluator())
    register(LeakageEvaluator())
    register(ToyEvaluator())
