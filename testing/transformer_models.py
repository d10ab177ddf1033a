"""Tiny Flux.1 and SD3.x pipelines built from configs, with a T5 tokenizer generated offline.

Same module names and block structure as the real models (double and single blocks, guidance embedding for
dev-style Flux; joint blocks, a last context-pre-only block, SD3.5's dual attention and RMS q/k norms), 16 latent
channels as in the real VAEs, and a few hundred thousand parameters. The two block counts differ from each other (2
double, 3 single; 3 joint) so that code which hard-codes a count, or swaps the two, fails the tests.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .tokenizer import DEFAULT_WORDS, tiny_clip_tokenizer

#: Tiny transformer families and their variants.
TINY_TRANSFORMER_FAMILIES = ("flux", "flux-schnell", "sd3", "sd3.5")

#: T5's context length in the tiny pipelines: short, so a CPU forward stays cheap; the real models use 512 / 256.
TINY_T5_LENGTH = 32

TINY_FLUX_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,  # 16 latent channels packed 2×2, as FLUX.1
    num_layers=2,
    num_single_layers=3,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=32,  # the T5 width
    pooled_projection_dim=32,  # CLIP-L's projection width
    guidance_embeds=True,
    axes_dims_rope=(2, 2, 4),
)
TINY_SD3_TRANSFORMER = dict(
    sample_size=8,
    patch_size=2,
    in_channels=16,
    num_layers=3,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=96,  # T5's width, ≥ the concatenated CLIP widths (32 + 48), as 4096 ≥ 768 + 1280
    caption_projection_dim=16,
    pooled_projection_dim=80,  # CLIP-L (32) + CLIP-G (48) pooled projections
    out_channels=16,
    pos_embed_max_size=16,
)
#: SD3.5 Medium's MMDiT-X: a second attention in the first blocks, RMS-normed queries and keys.
TINY_SD35_EXTRA = dict(dual_attention_layers=(0, 1), qk_norm="rms_norm")
TINY_TRANSFORMER_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=16,
    layers_per_block=1,
    norm_num_groups=32,
    block_out_channels=(32, 32, 64, 64),  # vae_scale_factor 8, like the real VAEs
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=64,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
#: The real VAEs' latent statistics (FLUX.1 ae / SD3 VAE).
VAE_FACTORS = {
    "flux": dict(shift_factor=0.1159, scaling_factor=0.3611),
    "sd3": dict(shift_factor=0.0609, scaling_factor=1.5305),
}
FLUX_SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)


def t5_vocab(words=DEFAULT_WORDS) -> list[tuple[str, float]]:
    """A Unigram vocabulary: T5's three special tokens, every listed word, and single characters for the rest."""
    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'-()"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -1.0) for w in dict.fromkeys(words)]
    vocab += [(c, -5.0) for c in chars] + [("▁" + c, -4.0) for c in chars]
    return vocab


def tiny_t5_tokenizer(folder: str | Path, words=DEFAULT_WORDS, max_length: int = TINY_T5_LENGTH):
    """A genuine T5 (Unigram) tokenizer over a small generated vocabulary, saved to ``folder`` and loaded back."""
    from transformers import T5Tokenizer

    tokenizer = T5Tokenizer(vocab=t5_vocab(words), extra_ids=0, model_max_length=max_length)
    tokenizer.save_pretrained(str(folder))
    return T5Tokenizer.from_pretrained(str(folder))


def _seeded(seed: int, build):
    torch.manual_seed(seed)
    return build().eval()


def _clip(tokenizer, hidden: int, seed: int, projection: bool):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from .models import _text_config

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return _seeded(
        seed, lambda: cls(_text_config(tokenizer, hidden_size=hidden, act="gelu" if projection else "quick_gelu"))
    )


def _t5(tokenizer, width: int, seed: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=width,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as FLUX.1 and SD3 use
        dense_act_fn="gelu_new",
        is_gated_act=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return _seeded(seed, lambda: T5EncoderModel(config))


def build_tiny_transformer_pipeline(family: str = "flux", seed: int = 0, words=None):
    """A tiny ``FluxPipeline`` (``"flux"`` dev-style with guidance embedding, ``"flux-schnell"`` without) or
    ``StableDiffusion3Pipeline`` (``"sd3"`` like SD3 Medium, ``"sd3.5"`` like SD3.5 Medium), seeded."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    if family not in TINY_TRANSFORMER_FAMILIES:
        raise ValueError(f"Unknown tiny family {family!r}; choose one of {', '.join(TINY_TRANSFORMER_FAMILIES)}.")
    words = words or DEFAULT_WORDS
    with tempfile.TemporaryDirectory() as tmp:
        clip_tokenizer = tiny_clip_tokenizer(Path(tmp) / "clip", words)
        t5_tokenizer = tiny_t5_tokenizer(Path(tmp) / "t5", words)
    base = "flux" if family.startswith("flux") else "sd3"
    vae = _seeded(seed, lambda: AutoencoderKL(**TINY_TRANSFORMER_VAE, **VAE_FACTORS[base]))
    if base == "flux":
        config = {**TINY_FLUX_TRANSFORMER, "guidance_embeds": family == "flux"}
        transformer = _seeded(seed, lambda: FluxTransformer2DModel(**config))
        return FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
            vae=vae,
            text_encoder=_clip(clip_tokenizer, 32, seed, projection=False),
            tokenizer=clip_tokenizer,
            text_encoder_2=_t5(t5_tokenizer, 32, seed + 2),
            tokenizer_2=t5_tokenizer,
            transformer=transformer,
        )
    config = {**TINY_SD3_TRANSFORMER, **(TINY_SD35_EXTRA if family == "sd3.5" else {})}
    transformer = _seeded(seed, lambda: SD3Transformer2DModel(**config))
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
        vae=vae,
        text_encoder=_clip(clip_tokenizer, 32, seed, projection=True),
        tokenizer=clip_tokenizer,
        text_encoder_2=_clip(clip_tokenizer, 48, seed + 1, projection=True),
        tokenizer_2=clip_tokenizer,
        text_encoder_3=_t5(t5_tokenizer, 96, seed + 2),
        tokenizer_3=t5_tokenizer,
        transformer=transformer,
    )
