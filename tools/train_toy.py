"""Train the toy base model shipped in ``toy/base/``: a small Stable Diffusion pipeline that knows coloured shapes.

    python tools/train_toy.py --out toy/base --seed 0            # about 30 minutes on 2 CPU cores
    python tools/train_toy.py --out toy/base --device cuda       # a few minutes on a GPU

Three stages, all seeded: (1) draw the dataset (``lorastack.toy``), (2) train the VAE as an autoencoder,
(3) train the UNet and the text encoder together on the VAE's latents with the usual epsilon objective and 10 %
caption dropout (so classifier-free guidance works). Weights are rounded to fp16 and saved as a diffusers folder:
the UNet and VAE in fp16, the text encoder in fp32 (transformers loads a model in the dtype its config records,
diffusers in fp32 unless told otherwise, so only this keeps plain ``StableDiffusionPipeline.from_pretrained`` in
one dtype).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lorastack import toy
from lorastack.core.base import RECOMMENDED_FILE

#: The guidance scale the toy is sampled with (its lorastack.json). Measured on the shipped model: every colour is
#: drawn right at guidance 1 to 2 (10 of 10 seeds each), but at 3 green and orange fall to 2-3 of 10: a model this
#: small learns a weak unconditional branch, and strong guidance extrapolates its errors.
GUIDANCE = 1.5

WORDS = (
    "a", "an", "of", "on", "photo", "background", *toy.SHAPES, *toy.COLOURS,
)  # fmt: skip


def build(tokenizer):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=toy.SIZE, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), layers_per_block=1,
    )  # fmt: skip
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=64, hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=toy.SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=16,
        block_out_channels=(32, 64, 128), cross_attention_dim=64, attention_head_dim=8,
        # attention at 8×8 and 4×4 only: at 16×16 it would triple the cost of a step for little gain here
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    )  # fmt: skip
    return vae, text, unet


def dataset(count: int, seed: int):
    rng = random.Random(seed)
    images, captions = [], []
    for _ in range(count):
        image, text = toy.sample(rng)
        images.append(torch.from_numpy(__import__("numpy").asarray(image)).permute(2, 0, 1).float() / 127.5 - 1)
        captions.append(text)
    return torch.stack(images), captions


def train_vae(vae, pixels, steps: int, device, log, batch=16) -> float:
    vae.to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    started = time.time()
    for step in range(steps):
        images = pixels[torch.randint(len(pixels), (batch,), generator=g)].to(device)
        dist = vae.encode(images).latent_dist
        recon = vae.decode(dist.sample()).sample
        kl = dist.kl().mean() / images[0].numel()
        loss = F.mse_loss(recon, images) + 1e-4 * kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae {step}/{steps} loss {loss.item():.4f} ({(time.time() - started) / (step + 1):.4f} s/step)")
    vae.eval()
    with torch.no_grad():
        latents = torch.cat(
            [vae.encode(pixels[i : i + 256].to(device)).latent_dist.mean for i in range(0, len(pixels), 256)]
        )
    return 1.0 / float(latents.std())


def train_unet(unet, text, tokenizer, latents, captions, steps, device, log, batch=32, lr=5e-4):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    unet.to(device).train()
    text.to(device).train()
    params = list(unet.parameters()) + list(text.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    warmup = 200
    lr_at = lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    ids = tokenizer(
        captions, padding="max_length", truncation=True, return_tensors="pt"
    ).input_ids  # as the pipeline pads
    empty = tokenizer([""], padding="max_length", return_tensors="pt").input_ids[0]
    g = torch.Generator().manual_seed(2)
    started = time.time()
    for step in range(steps):
        index = torch.randint(len(latents), (batch,), generator=g)
        x0 = latents[index].to(device)
        tokens = ids[index].clone()
        tokens[torch.rand(batch, generator=g) < 0.1] = empty
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(0, 1000, (batch,), generator=g).to(device)
        hidden = text(tokens.to(device))[0]
        pred = unet(scheduler.add_noise(x0, noise, t), t, hidden).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"unet {step}/{steps} loss {loss.item():.4f} ({(time.time() - started) / (step + 1):.4f} s/step)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(toy.TOY_DIR))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--vae-steps", type=int, default=700)
    parser.add_argument("--unet-steps", type=int, default=4000)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch", type=int, default=32, help="UNet batch size")
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--check", action="store_true", help="at the end, report how well each colour was learned")
    parser.add_argument("--resume", default=None, help="continue training the UNet and text encoder of this folder")
    args = parser.parse_args(argv)
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from lorastack.testing.tokenizer import tiny_clip_tokenizer

    def log(text):
        print(text, flush=True)

    torch.manual_seed(args.seed)
    pixels, captions = dataset(args.images, args.seed)
    log(f"dataset: {len(captions)} images, e.g. {captions[0]!r}")
    if args.resume:  # keep the VAE and tokenizer; train the UNet and text encoder further
        resumed = StableDiffusionPipeline.from_pretrained(args.resume, torch_dtype=torch.float32)
        vae, text, unet, tokenizer = resumed.vae, resumed.text_encoder, resumed.unet, resumed.tokenizer
        scaling = vae.config.scaling_factor
    else:
        tokenizer = tiny_clip_tokenizer(tempfile.mkdtemp(), WORDS)
        vae, text, unet = build(tokenizer)
        scaling = train_vae(vae, pixels, args.vae_steps, args.device, log, batch=args.vae_batch)
        vae.register_to_config(scaling_factor=scaling)
    vae.to(args.device)
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i : i + 256].to(args.device)).latent_dist.mean
                             for i in range(0, len(pixels), 256)]) * scaling  # fmt: skip
    log(f"latents {tuple(latents.shape)}, scaling factor {scaling:.4f}")
    train_unet(unet, text, tokenizer, latents.cpu(), captions, args.unet_steps, args.device, log,
               batch=args.batch, lr=args.lr)  # fmt: skip
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )  # as Stable Diffusion 1.x ships it
    pipe = StableDiffusionPipeline(vae=vae.eval(), text_encoder=text.eval(), tokenizer=tokenizer, unet=unet.eval(),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)  # fmt: skip
    pipe.to("cpu", torch.float16)
    pipe.text_encoder.to(torch.float32)  # fp16 values, stored as fp32: see the module docstring
    out = Path(args.out)
    pipe.save_pretrained(out, safe_serialization=True)
    unused = ("out", "check", *(("vae_steps", "vae_batch") if args.resume else ()))
    command = "python tools/train_toy.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in unused and v is not None
    )
    (out / RECOMMENDED_FILE).write_text(json.dumps({"recommended": {"guidance": GUIDANCE}}, indent=2) + "\n")
    notes = out / "TRAINING.md"
    before = Path(args.resume) / "TRAINING.md" if args.resume else None  # the commands that made the resumed model
    earlier = (
        before.read_text().split("\n\n{")[0] if before and before.exists() else "# The toy base model\n\nMade by:"
    )
    facts = {"words": list(WORDS), "shapes": toy.SHAPES, "colours": toy.SHAPE_COLOURS}
    notes.write_text(f"{earlier}\n\n    {command}\n\n{json.dumps(facts)}\n")
    log(f"saved to {out}")
    if args.check:  # the colour test of tests/test_toy.py, on the saved (fp16) weights loaded as any base is
        from lorastack.core import load_base

        check = load_base(str(out))
        check.set_progress_bar_config(disable=True)
        for colour in toy.SHAPE_COLOURS:
            dominant = toy.colour_check(check, colour)
            log(f"check {colour}: {sum(d == colour for d in dominant)}/{len(dominant)} {dominant}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
