"""A content-addressed disk cache of VAE latent distributions.

Each file holds the mean and std of one image under one geometry. Its name is a hash of the image's identity (the
file bytes' sha256, or of the decoded pixels), the geometry (bucket, resized size, crop box, flip), the preprocessing
version, a caller's settings fingerprint and the VAE's identity (config plus a weight fingerprint of the encoder).
Edited images, other sizes or another VAE miss; unchanged data never re-encodes, across runs too.

The distribution is cached, not one sample of it, so every step still draws fresh latent noise from the caller's
generator (sd-scripts#1709). Random crops cannot be cached (the crop changes every epoch): ``latents`` raises
``LatentCacheError`` for an example made with ``center_crop=False`` instead of silently encoding every step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lorastack.adapters.outputs import atomic_write_bytes

from ..errors import LorastackError
from .data import PREPROCESS_VERSION, TrainingData

CACHE_FORMAT = "lorastack-latents/1"


class LatentCacheError(LorastackError):
    """Latents that cannot be cached: a random crop, or an example without the fields a cache key needs."""


def vae_fingerprint(vae) -> str:
    """The VAE's identity for cache keys: its config plus a hash of a few encoder tensors' bytes (cheap).

    Only the encoder side is hashed: a VAE with a fine-tuned decoder only (like sd-vae-ft-mse) encodes the same.
    """
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    state = vae.state_dict()
    names = sorted(n for n in state if n.startswith(("encoder.", "quant_conv."))) or sorted(state)
    digest.update(json.dumps([[n, list(state[n].shape), str(state[n].dtype)] for n in names]).encode())
    picked = {names[0], names[len(names) // 2], names[-1], *(n for n in names if n.startswith("quant_conv."))}
    for name in sorted(picked):
        tensor = state[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(name.encode() + tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _unflipped_left(example: dict[str, Any]) -> int:
    # crop_top_left is in the image as the model sees it; a flipped crop is the mirror of the unflipped one
    left = example["crop_top_left"][1]
    return example["resized_size"][1] - left - example["target_size"][1] if example["flip"] else left


class LatentCache:
    """Latent distributions of training examples, on disk under ``folder``, encoded with ``vae`` on a miss.

    ``settings_fingerprint``: anything else that changes an example's pixels and is not in the example (an
    augmentation the caller adds). Counters: ``hits``, ``misses`` (entries not found or unreadable), ``encodes``
    (VAE calls), ``corrupt`` (unreadable files, re-encoded).
    """

    def __init__(self, folder: str | Path, vae, settings_fingerprint: str = "", encode_batch: int = 8):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.vae = vae
        self.vae_id = vae_fingerprint(vae)
        self.settings_fingerprint = settings_fingerprint
        self.encode_batch = max(1, encode_batch)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.hits = self.misses = self.encodes = self.corrupt = 0

    # --- keys and files ----------------------------------------------------------------------------------------

    def entry_key(self, example: dict[str, Any], flip: bool | None = None) -> str:
        """The cache key of ``example`` (or of its mirror image when ``flip`` differs from ``example["flip"]``)."""
        if not example.get("center_crop", True):
            raise LatentCacheError(
                "latents cannot be cached with center_crop=False: a random crop changes every epoch; "
                "turn the latent cache off or use center_crop=True"
            )
        try:
            fields = {
                "format": CACHE_FORMAT,
                "preprocess": PREPROCESS_VERSION,
                "vae": self.vae_id,
                "settings": self.settings_fingerprint,
                "image": example["key"],
                "target": list(example["target_size"]),
                "resized": list(example["resized_size"]),
                "crop": [example["crop_top_left"][0], _unflipped_left(example)],
                "flip": bool(example["flip"] if flip is None else flip),
            }
        except KeyError as e:
            raise LatentCacheError(f"example has no {e.args[0]!r}: make examples with TrainingData.example") from None
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def _load(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        from safetensors import safe_open

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("key") != key:
                    raise ValueError("key mismatch")
                mean, std = f.get_tensor("mean"), f.get_tensor("std")
            if mean.shape != std.shape or mean.dim() != 3 or not (mean.isfinite().all() and std.isfinite().all()):
                raise ValueError("bad tensors")
        except Exception:  # truncated, garbage or foreign file: re-encode rather than crash the run
            self.corrupt += 1
            return None
        return mean, std

    def _save(self, key: str, mean: torch.Tensor, std: torch.Tensor) -> None:
        from safetensors.torch import save

        data = save(
            {"mean": mean.float().cpu().contiguous(), "std": std.float().cpu().contiguous()},
            metadata={"key": key, "format": CACHE_FORMAT, "vae": self.vae_id},
        )
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # readers (other ranks, a later run) see the old file or the whole new one. Not durable: a file cut short
        # by a crash reads as corrupt and is re-encoded.
        atomic_write_bytes(path, data, durable=False)

    # --- encoding ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vae = self.vae
        param = next(vae.parameters())
        output = vae.encode(pixels.to(param.device, param.dtype))
        self.encodes += 1
        dist = getattr(output, "latent_dist", None)
        if dist is None:  # a VAE without a posterior (AutoencoderTiny): deterministic latents
            mean = output.latents
            return mean.float(), torch.zeros_like(mean, dtype=torch.float32)
        return dist.mean.float(), dist.std.float()

    def distributions(self, examples: Sequence[dict[str, Any]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(mean, std)`` (C×h×w, fp32, CPU) of each example: read from disk, or encoded in batches and stored.

        With ``random_flip`` a miss encodes the mirror image in the same VAE call, so the other flip is a hit later.
        """
        keys = [self.entry_key(ex) for ex in examples]
        found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        todo: dict[str, tuple[dict[str, Any], bool]] = {}  # key → (example, encode its mirror image)
        for key, example in zip(keys, examples):
            if key in found or key in todo:
                self.hits += 1
                continue
            loaded = self._load(key)
            if loaded is not None:
                self.hits += 1
                found[key] = loaded
            else:
                self.misses += 1
                todo[key] = (example, bool(example.get("random_flip")))
        jobs: list[tuple[str, torch.Tensor]] = []
        for key, (example, mirror) in todo.items():
            jobs.append((key, example["pixels"]))
            if mirror:
                jobs.append((self.entry_key(example, not example["flip"]), example["pixels"].flip(-1)))
        by_shape: dict[tuple[int, ...], list[tuple[str, torch.Tensor]]] = {}
        for job in jobs:
            by_shape.setdefault(tuple(job[1].shape), []).append(job)
        for group in by_shape.values():
            for start in range(0, len(group), self.encode_batch):
                chunk = group[start : start + self.encode_batch]
                means, stds = self._encode(torch.stack([pixels for _, pixels in chunk]))
                for (key, _), mean, std in zip(chunk, means.cpu(), stds.cpu()):
                    self._save(key, mean, std)
                    found[key] = (mean, std)
        return [found[key] for key in keys]

    def latents(
        self,
        examples: dict[str, Any] | Sequence[dict[str, Any]],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Scaled latents ``(sample - shift_factor) * scaling_factor``, the sample drawn with ``generator``.

        One example gives C×h×w, a list (same bucket) B×C×h×w. The noise is drawn as ``latent_dist.sample`` draws
        it, so with the same generator state this equals encoding the pixels directly (fp32).
        """
        single = isinstance(examples, dict)
        pairs = self.distributions([examples] if single else examples)
        mean = torch.stack([m for m, _ in pairs])
        std = torch.stack([s for _, s in pairs])
        noise_device = generator.device if generator is not None else torch.device("cpu")
        noise = torch.randn(mean.shape, generator=generator, device=noise_device, dtype=torch.float32)
        target = torch.device(device) if device is not None else noise_device
        sample = mean.to(target) + std.to(target) * noise.to(target)
        sample = (sample - self.shift_factor) * self.scaling_factor
        return sample[0] if single else sample

    get_or_encode = latents

    def fill(self, data: TrainingData, batch_size: int = 8, progress: Callable[[int, int], None] | None = None) -> int:
        """Encode every image of ``data`` not cached yet (both flips with ``random_flip``), before training, so the
        VAE can leave the GPU. Returns the number of VAE calls; ``progress(done, total)`` is called per batch."""
        before = self.encodes
        batches = data.epoch_batches(0, batch_size)
        seen: set[int] = set()
        for number, batch in enumerate(batches, 1):
            batch = [i for i in batch if i % len(data.items) not in seen]
            seen.update(i % len(data.items) for i in batch)
            if batch:
                self.distributions([data.example(i, 0) for i in batch])
            if progress is not None:
                progress(number, len(batches))
        return self.encodes - before
