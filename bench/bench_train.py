"""Training throughput and peak memory: lorastack's engine against diffusers' LoRA training recipe, in one run.

    python bench/bench_train.py                      # SD1.5-size random weights, 512 px, rank 16 (GPU: bf16)
    python bench/bench_train.py --family sdxl        # SDXL-size, 1024 px
    python bench/bench_train.py --family sdxl --quantize-base bnb-nf4   # the frozen UNet in NF4 (QLoRA), a GPU's
    python bench/bench_train.py --quick              # the tiny pipeline, for a smoke test
    python bench/bench_train.py --device cpu --resolution 256 --steps 3

The anchor is ``examples/text_to_image/train_text_to_image_lora.py`` of diffusers (``…_lora_sdxl.py`` for SDXL:
both text encoders' penultimate states, the pooled embedding and the size/crop time ids) re-expressed as a plain
loop: peft LoRA on the UNet attention, the VAE encoding every batch, the text encoders run every step, AdamW, fp32
LoRA weights under mixed precision. With ``--quantize-base`` both get the same quantized UNet (diffusers'
quantizers; peft trains beside its bnb/torchao layers). lorastack runs its own engine (``lorastack.core.training``)
on the same pipeline, data and options, with its latent cache filled first. Both are timed over the same number of
steps after warm-up, interleaved (anchor, lorastack, anchor, lorastack) so machine noise hits both. Prints steps/s,
the ratio, and peak memory (CUDA: max allocated; CPU: peak RSS growth).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def _images(folder: Path, count: int, size: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(count):
        pixels = (torch.rand(3, 8, 8, generator=g) * 255).byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).resize((size, size)).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"a photo number {i}")
    return folder


def _peak() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB → GiB


def _reset_peak() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def anchor(pipe, data: Path, args, device, dtype) -> tuple[float, float]:
    """diffusers' train_text_to_image_lora.py loop; returns (steps/s, peak GiB)."""
    import numpy as np
    from diffusers import DDPMScheduler
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict  # noqa: F401  (the script saves with it)
    from PIL import Image

    unet, vae, text = pipe.unet, pipe.vae, pipe.text_encoder
    text_2 = getattr(pipe, "text_encoder_2", None)
    for m in (unet, vae, text, text_2):
        if m is not None:
            m.requires_grad_(False)
    if args.quantize_base == "none":
        unet.to(device, dtype)
    elif not args.quantize_base.startswith("bnb"):  # bitsandbytes placed its weights on the GPU already
        unet.to(device)
    for m in (text, text_2):
        if m is not None:
            m.to(device, dtype)
    vae.to(device, torch.float32)
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))  # fmt: skip
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    files = sorted(data.glob("*.png"))
    captions = [f.with_suffix(".txt").read_text() for f in files]
    size = args.resolution

    def ids(tokenizer, texts):
        return tokenizer(texts, padding="max_length", truncation=True, max_length=77,
                         return_tensors="pt").input_ids.to(device)  # fmt: skip

    def conditioning(texts) -> dict:
        if text_2 is None:
            return {"encoder_hidden_states": text(ids(pipe.tokenizer, texts))[0]}
        # train_text_to_image_lora_sdxl.py: penultimate states of both encoders, the second's pooled output
        first = text(ids(pipe.tokenizer, texts), output_hidden_states=True)
        second = text_2(ids(pipe.tokenizer_2, texts), output_hidden_states=True)
        hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        time_ids = torch.tensor([[size, size, 0, 0, size, size]] * len(texts), device=device, dtype=hidden.dtype)
        return {"encoder_hidden_states": hidden, "added_cond_kwargs": {"text_embeds": second[0], "time_ids": time_ids}}

    def step(i):
        index = [(i * args.batch + j) % len(files) for j in range(args.batch)]
        pixels = torch.stack([
            torch.from_numpy(np.array(Image.open(files[k]).convert("RGB").resize((size, size))))
            .permute(2, 0, 1).float() / 127.5 - 1 for k in index
        ]).to(device)  # fmt: skip
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), device=device)
            noisy = scheduler.add_noise(latents, noise, t)
            pred = unet(noisy, t, **conditioning([captions[k] for k in index])).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()

    for i in range(args.warmup):
        step(i)
    _sync(device)
    _reset_peak()
    started = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    _sync(device)
    rate = args.steps / (time.perf_counter() - started)
    unet.delete_adapters(["default"])
    return rate, _peak()


def ours(pipe, data: Path, args, device, home: Path) -> tuple[float, float]:
    from lorastack.core.training.api import train

    times: list[float] = []
    options = {
        "steps": args.warmup + args.steps, "resolution": args.resolution, "rank": args.rank, "batch_size": args.batch,
        "mixed_precision": args.mixed_precision, "gradient_checkpointing": args.gradient_checkpointing,
        "device": device.type, "cache_latents": True, "seed": 0,
    }  # fmt: skip
    # fill the latent cache first (what a second run over the same data gets for free)
    train("lora", "bench", data, output=home / f"fill-{time.time_ns()}", options={**options, "steps": 1},
          pipe=pipe, progress=False)  # fmt: skip
    _reset_peak()
    train("lora", "bench", data, output=home / f"run-{time.time_ns()}", options=options, pipe=pipe, progress=False,
          on_step=lambda step, loss: times.append(time.perf_counter()))  # fmt: skip
    timed = times[args.warmup - 1 :]
    return (len(timed) - 1) / (timed[-1] - timed[0]), _peak()


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the tiny pipeline (smoke test)")
    parser.add_argument("--family", choices=["sd15", "sdxl"], default="sd15")
    parser.add_argument(
        "--quantize-base", default="none", help="quantize the frozen UNet: bnb-nf4 (GPU), torchao-int8, … or none"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_flush_denormal(True)  # random weights produce subnormals that slow CPU math by orders of magnitude
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.resolution = args.resolution or (32 if args.quick else 512 if args.family == "sd15" else 1024)
    args.steps = args.steps or (3 if args.quick or not gpu else 30)
    args.mixed_precision = "bf16" if gpu else "no"
    dtype = torch.bfloat16 if gpu else torch.float32
    from lorastack.testing.models import build_full_pipeline, build_tiny_pipeline

    home = Path(tempfile.mkdtemp(prefix="bench-train-"))
    import os

    os.environ["LORASTACK_HOME"] = str(home / "home")
    data = _images(home / "data", 8, args.resolution)
    results = {"anchor": [], "lorastack": []}
    for _ in range(args.rounds):
        for label in ("anchor", "lorastack"):
            pipe = (
                build_tiny_pipeline("sd1" if args.family == "sd15" else "sdxl")
                if args.quick
                else (build_full_pipeline(args.family))
            )
            pipe.set_progress_bar_config(disable=True)
            if args.quantize_base != "none":
                from lorastack.core.quantized import quantize_loaded

                pipe.unet.to(dtype)  # quantized in the compute dtype, as the engine's --quantize-base does
                quantize_loaded(pipe, args.quantize_base, str(device))
            rate, peak = (
                anchor(pipe, data, args, device, dtype) if label == "anchor" else ours(pipe, data, args, device, home)
            )
            results[label].append((rate, peak))
            del pipe
            gc.collect()
    best = {k: max(r for r, _ in v) for k, v in results.items()}
    peaks = {k: max(p for _, p in v) for k, v in results.items()}
    summary = {
        "model": f"{'tiny' if args.quick else 'full-size random-weight'} {args.family}",
        "quantize_base": args.quantize_base,
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "resolution": args.resolution, "rank": args.rank, "batch": args.batch,
        "precision": args.mixed_precision, "gradient_checkpointing": args.gradient_checkpointing,
        "steps_per_s": best, "ratio": best["lorastack"] / best["anchor"], "peak_gib": peaks,
    }  # fmt: skip
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['model']} on {summary['device']}, {args.resolution} px, rank {args.rank}, b{args.batch}, "
              f"{args.mixed_precision}")  # fmt: skip
        print(f"  diffusers recipe: {best['anchor']:.3f} steps/s, peak {peaks['anchor']:.2f} GiB")
        print(f"  lorastack:        {best['lorastack']:.3f} steps/s, peak {peaks['lorastack']:.2f} GiB")
        print(f"  lorastack / diffusers: {summary['ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
