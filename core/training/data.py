"""Training examples from dataset items: aspect-ratio buckets, cover-resize and crop, flips, caption rules, batches.

Every random choice (batch order, flip, crop offset, caption dropout, tag order) comes from a generator the caller
passes or from one derived from ``(seed, epoch, index)``, never from a global RNG, so a run resumed mid-epoch makes
the same choices an uninterrupted run would. Sizes are ``(height, width)`` throughout, as in SDXL's conditioning.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import LorastackError
from ..interfaces import DatasetItem

# Bump when the pixels a given geometry produces change (resampling filter, rounding): it is part of cache keys.
PREPROCESS_VERSION = 1

Rng = random.Random | torch.Generator


class TrainingDataError(LorastackError, ValueError):
    """Data options or dataset items that training cannot use; the message names the value and what is valid."""


@dataclass
class DataOptions:
    """How images become training examples and captions become prompts.

    ``min_bucket``/``max_bucket`` (bucket side limits) default to half and twice ``resolution``.
    """

    resolution: int = 512
    center_crop: bool = True
    random_flip: bool = False
    buckets: bool = False
    bucket_step: int = 64
    min_bucket: int | None = None
    max_bucket: int | None = None
    caption_prefix: str = ""
    caption_dropout: float = 0.0
    shuffle_tags: bool = False
    keep_tokens: int = 0
    repeats: int = 1

    def bucket_limits(self) -> tuple[int, int]:
        """The smallest and largest bucket side, defaults filled in."""
        step = self.bucket_step
        low = self.min_bucket if self.min_bucket is not None else max(step, self.resolution // 2 // step * step)
        high = self.max_bucket if self.max_bucket is not None else self.resolution * 2 // step * step
        return low, high

    def validate(self) -> DataOptions:
        """Raise ``TrainingDataError`` for a bad value; return ``self``."""
        for name in ("resolution", "bucket_step", "keep_tokens", "repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TrainingDataError(f"{name} {value!r} is not an integer")
        if self.resolution < 8 or self.resolution % 8:
            hint = f"; try {max(8, self.resolution // 8 * 8)}" if self.resolution > 0 else ""
            raise TrainingDataError(f"resolution {self.resolution} must be a positive multiple of 8{hint}")
        if self.bucket_step < 8 or self.bucket_step % 8:
            raise TrainingDataError(f"bucket_step {self.bucket_step} must be a positive multiple of 8 (usually 64)")
        if not isinstance(self.caption_dropout, int | float) or not 0 <= self.caption_dropout <= 1:
            raise TrainingDataError(f"caption_dropout {self.caption_dropout!r} must be a probability in [0, 1]")
        if self.keep_tokens < 0:
            raise TrainingDataError(f"keep_tokens {self.keep_tokens} must be 0 or more")
        if self.repeats < 1:
            raise TrainingDataError(f"repeats {self.repeats} must be at least 1")
        if not isinstance(self.caption_prefix, str):
            raise TrainingDataError(f"caption_prefix {self.caption_prefix!r} is not a string")
        if self.buckets:
            low, high = self.bucket_limits()
            for name, value in (("min_bucket", low), ("max_bucket", high)):
                if isinstance(value, bool) or not isinstance(value, int) or value < self.bucket_step:
                    raise TrainingDataError(f"{name} {value!r} must be an integer ≥ bucket_step {self.bucket_step}")
                if value % self.bucket_step:
                    raise TrainingDataError(f"{name} {value} is not a multiple of bucket_step {self.bucket_step}")
            if not low <= self.resolution <= high:
                raise TrainingDataError(
                    f"resolution {self.resolution} must lie between min_bucket {low} and max_bucket {high}"
                )
        return self


# --- geometry ------------------------------------------------------------------------------------------------------


def make_buckets(resolution: int, step: int = 64, min_side: int = 256, max_side: int = 1024) -> list[tuple[int, int]]:
    """Bucket sizes ``(h, w)`` (kohya-style): sides multiples of ``step`` within the limits, area ≤ resolution²,
    each the largest such area for its width, plus the square."""
    area = resolution * resolution
    square = max(step, resolution // step * step)
    sizes = {(square, square)}
    for width in range(min_side, max_side + 1, step):
        height = min(max_side, area // width // step * step)
        if height >= min_side:
            sizes.add((height, width))
            sizes.add((width, height))
    return sorted(sizes)


def nearest_bucket(width: int, height: int, buckets: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """The bucket ``(h, w)`` whose aspect ratio is nearest to the image's (in log ratio: wide and tall alike)."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[1] / b[0]) - ratio), -b[0] * b[1], b))


def cover_size(width: int, height: int, size: tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` of the image scaled (aspect kept) to the smallest size that covers ``size``: one side fits exactly,
    so the crop that follows removes only the other side's excess."""
    target_h, target_w = size
    scale = max(target_w / width, target_h / height)
    return max(target_h, round(height * scale)), max(target_w, round(width * scale))


def _uniform(rng: Rng) -> float:
    if isinstance(rng, random.Random):
        return rng.random()
    return float(torch.rand((), generator=rng, device=rng.device))


def _randbelow(rng: Rng, n: int) -> int:
    if n <= 1:
        return 0
    if isinstance(rng, random.Random):
        return rng.randrange(n)
    return int(torch.randint(n, (), generator=rng, device=rng.device))


def _permutation(rng: Rng, n: int) -> list[int]:
    if isinstance(rng, random.Random):
        order = list(range(n))
        rng.shuffle(order)
        return order
    return torch.randperm(n, generator=rng, device=rng.device).tolist()


class Prepared(NamedTuple):
    pixels: torch.Tensor  # 3×H×W float32 in [-1, 1]
    crop_top_left: tuple[int, int]  # in the resized image, as the model sees it (after a flip)
    original_size: tuple[int, int]  # (h, w) before resizing
    mask: torch.Tensor | None  # H×W float32 in [0, 1]
    resized_size: tuple[int, int]  # (h, w) after the cover resize, before the crop


def prepare(image, size: tuple[int, int], center_crop: bool, flip: bool, rng: Rng | None = None, mask=None):
    """``image`` (PIL) resized to cover ``size`` (h, w), cropped to it (center, or at random from ``rng``) and
    flipped horizontally when ``flip``; ``mask`` (PIL ``L``, same size) gets the same transform."""
    from PIL import Image

    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    target_h, target_w = size
    resized_h, resized_w = cover_size(width, height, size)
    if center_crop or rng is None:
        top, left = (resized_h - target_h) // 2, (resized_w - target_w) // 2
    else:
        top, left = _randbelow(rng, resized_h - target_h + 1), _randbelow(rng, resized_w - target_w + 1)
    box = (left, top, left + target_w, top + target_h)

    def transform(picture, resample):
        if picture.size != (resized_w, resized_h):
            picture = picture.resize((resized_w, resized_h), resample=resample)
        picture = picture.crop(box)
        # flipping after the crop mirrors the crop box too, so a flipped example is exactly the mirror image
        return picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else picture

    pixels = np.asarray(transform(image, Image.Resampling.LANCZOS), dtype=np.uint8)
    tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 127.5 - 1.0
    mask_tensor = None
    if mask is not None:
        if mask.size != image.size:
            raise TrainingDataError(f"mask is {mask.size[0]}x{mask.size[1]}, its image {width}x{height}")
        # bilinear, not Lanczos: no ringing outside [0, 1] at a mask's hard edges
        values = np.asarray(transform(mask.convert("L"), Image.Resampling.BILINEAR), dtype=np.uint8)
        mask_tensor = torch.from_numpy(values.copy()).float() / 255.0
    crop = (top, resized_w - left - target_w if flip else left)
    return Prepared(tensor, crop, (height, width), mask_tensor, (resized_h, resized_w))


# --- captions ------------------------------------------------------------------------------------------------------


def process_caption(caption: str | None, options: DataOptions, rng: Rng) -> str:
    """Tag shuffle (keeping the first ``keep_tokens`` tags in place), then the prefix, then dropout to ``""``.

    The prefix stays outside the shuffle, so a trigger phrase always comes first. Draws from ``rng`` only for the
    features that are on, always in the same order, so a given ``rng`` state gives a given caption.
    """
    text = (caption or "").strip()
    if options.caption_dropout > 0 and _uniform(rng) < options.caption_dropout:
        return ""
    if options.shuffle_tags and "," in text:
        tags = [t.strip() for t in text.split(",") if t.strip()]
        kept, rest = tags[: options.keep_tokens], tags[options.keep_tokens :]
        text = ", ".join(kept + [rest[i] for i in _permutation(rng, len(rest))])
    prefix = options.caption_prefix.strip().rstrip(",").rstrip()
    if prefix:
        text = f"{prefix}, {text}" if text else prefix
    return text


# --- the dataset ---------------------------------------------------------------------------------------------------


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed from ``parts``, stable across processes and Python versions (unlike ``hash``)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def pixel_key(image) -> str:
    """The identity of decoded pixels, for items whose source gave no ``key``."""
    header = f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode()
    return hashlib.sha256(header + image.tobytes()).hexdigest()


class TrainingData:
    """Items with their buckets; batches per epoch and examples, all reproducible from ``seed``.

    Indices are sample indices in ``range(len(self))`` (``len(items) * repeats``); sample ``i`` shows item
    ``i % len(items)``, so repeats of an image draw their own flips, crops and captions.
    """

    def __init__(self, items: Sequence[DatasetItem], options: DataOptions, seed: int = 0):
        self.items = list(items)
        self.options = options.validate()
        self.seed = seed
        if not self.items:
            raise TrainingDataError("the dataset has no items to train on")
        res = options.resolution
        self.bucket_sizes = make_buckets(res, options.bucket_step, *options.bucket_limits()) if options.buckets else []
        self.buckets: list[tuple[int, int]] = []
        for item in self.items:
            width, height = item.image.size
            if item.mask is not None and item.mask.size != item.image.size:
                raise TrainingDataError(
                    f"{item.source}: mask is {item.mask.size[0]}x{item.mask.size[1]}, image {width}x{height}"
                )
            self.buckets.append(nearest_bucket(width, height, self.bucket_sizes) if options.buckets else (res, res))
        self._keys: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.items) * self.options.repeats

    def item_index(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} is out of range 0..{len(self) - 1}")
        return index % len(self.items)

    def key(self, index: int) -> str:
        """The cache identity of a sample's image: the source's key, or a hash of the decoded pixels."""
        item_index = self.item_index(index)
        if item_index not in self._keys:
            item = self.items[item_index]
            self._keys[item_index] = item.key or pixel_key(item.image)
        return self._keys[item_index]

    def bucket_counts(self) -> dict[tuple[int, int], int]:
        """Images per bucket ``(h, w)``, for a report before training."""
        counts: dict[tuple[int, int], int] = {}
        for bucket in self.buckets:
            counts[bucket] = counts.get(bucket, 0) + 1
        return dict(sorted(counts.items()))

    def epoch_batches(self, epoch: int, batch_size: int, drop_last: bool = False) -> list[list[int]]:
        """Sample indices in batches for ``epoch``: one bucket per batch, shuffled within buckets and across batches,
        each sample ``repeats`` times; the same for the same ``(seed, epoch)``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise TrainingDataError(f"batch_size {batch_size!r} must be an integer ≥ 1")
        rng = random.Random(derived_seed(self.seed, "batches", epoch))
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for sample in range(len(self)):
            by_bucket.setdefault(self.buckets[sample % len(self.items)], []).append(sample)
        batches = []
        for bucket in sorted(by_bucket):
            samples = by_bucket[bucket]
            rng.shuffle(samples)
            for start in range(0, len(samples), batch_size):
                batch = samples[start : start + batch_size]
                if len(batch) == batch_size or not drop_last:
                    batches.append(batch)
        rng.shuffle(batches)
        return batches

    def caption(self, index: int, rng: Rng) -> str:
        """The sample's caption after shuffle, prefix and dropout, drawn from ``rng``."""
        return process_caption(self.items[self.item_index(index)].caption, self.options, rng)

    def rng(self, epoch: int, index: int) -> random.Random:
        """The generator ``example(index, epoch)`` uses: a function of ``(seed, epoch, index)`` only."""
        return random.Random(derived_seed(self.seed, "example", epoch, index))

    def example(self, index: int, rng: Rng | int) -> dict[str, Any]:
        """One training example. ``rng``: a generator to draw flip, crop and caption choices from, or an epoch
        number, to draw them from ``self.rng(epoch, index)`` (independent of call order and workers).

        Keys: ``pixels`` (3×H×W in [-1, 1]), ``mask`` (H×W in [0, 1] or None), ``caption``, ``original_size``,
        ``crop_top_left``, ``target_size`` (the bucket), ``resized_size``, ``flip``, ``key``, ``index``, ``item``,
        ``center_crop`` and ``random_flip`` (what ``LatentCache`` needs to key and pair the latents).
        """
        if isinstance(rng, int) and not isinstance(rng, bool):
            rng = self.rng(rng, index)
        item_index = self.item_index(index)
        item = self.items[item_index]
        options = self.options
        flip = options.random_flip and _uniform(rng) < 0.5
        size = self.buckets[item_index]
        prepared = prepare(item.image, size, options.center_crop, flip, rng, mask=item.mask)
        return {
            "pixels": prepared.pixels,
            "mask": prepared.mask,
            "caption": self.caption(index, rng),
            "original_size": prepared.original_size,
            "crop_top_left": prepared.crop_top_left,
            "target_size": size,
            "resized_size": prepared.resized_size,
            "flip": flip,
            "key": self.key(index),
            "index": index,
            "item": item_index,
            "center_crop": options.center_crop,
            "random_flip": options.random_flip,
        }


def collate(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A batch of same-bucket examples: stacked ``pixels``, ``masks`` (None when no example has one; ones where one
    is missing), ``captions``, and SDXL's ``time_ids`` (B×6: original size, crop top-left, target size)."""
    pixels = torch.stack([ex["pixels"] for ex in examples])
    masks = None
    if any(ex["mask"] is not None for ex in examples):
        masks = torch.stack(
            [ex["mask"] if ex["mask"] is not None else torch.ones(pixels.shape[-2:]) for ex in examples]
        )
    time_ids = torch.tensor(
        [[*ex["original_size"], *ex["crop_top_left"], *ex["target_size"]] for ex in examples], dtype=torch.float32
    )
    return {"pixels": pixels, "masks": masks, "captions": [ex["caption"] for ex in examples], "time_ids": time_ids}
