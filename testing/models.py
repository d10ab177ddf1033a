"""Deterministic Stable Diffusion pipelines built from configs, for tests and benchmarks.

Two tiers:

* **tiny** pipelines (SD1.x and SDXL architecture) with the real block topology and module names but a few
  million parameters, built in well under a second and saved as ordinary diffusers folders;
* **full-size** random-weight UNets and pipelines with the real SD1.5 / SD2.1 / SDXL configs, for shape, memory
  and speed work (several GB of RAM; never used by the default test run).

Everything is seeded: the same seed gives bit-identical weights in every process on the same torch build.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .tokenizer import DEFAULT_WORDS, tiny_clip_tokenizer

#: Families with a tiny builder (the transformer ones are built in :mod:`lorastack.testing.transformer_models`).
TINY_FAMILIES = ("sd1", "sdxl", "flux", "flux-schnell", "sd3", "sd3.5")
#: Families with full-size configs in ``lorastack.core/configs``.
FULL_FAMILIES = ("sd15", "sd21", "sdxl")

# Same block topology and module names as SD1.5 (4 levels, attention in the first three, 2 layers per block,
# 1x1-conv proj_in/out), so kohya and single-file key layouts map one to one.
TINY_SD1_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(32, 64, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=32,
)
# Same topology as SDXL: no attention in the first level, linear projections, several transformer layers per
# block in the last level, text_time added conditioning.
TINY_SDXL_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 1, 2),
    attention_head_dim=(2, 4, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=96,  # text_embeds (48) + 6 time ids x 8
    # text_encoder (32) + text_encoder_2 (48) hidden states, concatenated. The two encoders have different widths,
    # as in SDXL (768 / 1280): single-file loaders tell them apart by width.
    cross_attention_dim=80,
    norm_num_groups=32,
)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=32,
    block_out_channels=(32, 32, 64, 64),  # 4 levels: vae_scale_factor 8, like the real VAEs
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=64,
)
SD1_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)


def _text_config(tokenizer, hidden_size: int = 32, layers: int = 2, act: str = "quick_gelu"):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=hidden_size,
        layer_norm_eps=1e-5,
        hidden_act=act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _seeded(seed: int, build):
    torch.manual_seed(seed)
    module = build()
    return module.eval()


def build_tiny_pipeline(family: str = "sd1", seed: int = 0, tokenizer_dir: str | Path | None = None, words=None):
    """Build a tiny pipeline with seeded random weights: SD1.x (``"sd1"``), SDXL (``"sdxl"``), FLUX.1 dev
    (``"flux"``) or schnell (``"flux-schnell"``), SD3 Medium (``"sd3"``) or SD3.5 Medium (``"sd3.5"``).

    ``tokenizer_dir`` is where the generated CLIP tokenizer files are written (a temporary folder by default).
    """
    import tempfile

    if family.startswith(("flux", "sd3")) and family in TINY_FAMILIES:
        from .transformer_models import build_tiny_transformer_pipeline

        return build_tiny_transformer_pipeline(family, seed, words)

    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if family not in TINY_FAMILIES:
        raise ValueError(f"Unknown tiny family {family!r}; choose one of {', '.join(TINY_FAMILIES)}.")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = tiny_clip_tokenizer(tokenizer_dir or tmp, words or DEFAULT_WORDS)
    vae = _seeded(seed, lambda: AutoencoderKL(**TINY_VAE))
    if family == "sd1":
        unet = _seeded(seed, lambda: UNet2DConditionModel(**TINY_SD1_UNET))
        text_encoder = _seeded(seed, lambda: CLIPTextModel(_text_config(tokenizer)))
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=DDIMScheduler(**SD1_SCHEDULER),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    unet = _seeded(seed, lambda: UNet2DConditionModel(**TINY_SDXL_UNET))
    text_encoder = _seeded(seed, lambda: CLIPTextModel(_text_config(tokenizer)))
    text_encoder_2 = _seeded(
        seed + 1, lambda: CLIPTextModelWithProjection(_text_config(tokenizer, hidden_size=48, act="gelu"))
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            steps_offset=1,
            timestep_spacing="leading",
            prediction_type="epsilon",
        ),
    )


def save_tiny_pipeline(folder: str | Path, family: str = "sd1", seed: int = 0) -> Path:
    """Build a tiny pipeline and save it as a diffusers folder; returns the folder.

    A tiny FLUX.1 carries a ``lorastack.json`` recommending 64 px: its transformer has no sample size to tell it
    from the real one (1024 px), as SD3's and the UNets' have."""
    folder = Path(folder)
    build_tiny_pipeline(family, seed).save_pretrained(folder)
    if family.startswith("flux"):
        (folder / "lorastack.json").write_text(json.dumps({"recommended": {"resolution": 64}}) + "\n")
    return folder


def load_pipeline(folder: str | Path):
    """Load a saved pipeline folder through the public diffusers entry point, offline."""
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)


# --- full size -------------------------------------------------------------------------------------------------


def full_config_dir(family: str) -> Path:
    """The folder of shipped diffusers configs (JSON only) for ``sd15``, ``sd21`` or ``sdxl``."""
    if family not in FULL_FAMILIES:
        raise ValueError(f"Unknown family {family!r}; choose one of {', '.join(FULL_FAMILIES)}.")
    return Path(str(resources.files("lorastack.core") / "configs" / family))


def full_config(family: str, component: str) -> dict[str, Any]:
    """One component's config (``unet``, ``vae``, ``text_encoder``, ``text_encoder_2``, ``scheduler``)."""
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    return json.loads((full_config_dir(family) / component / name).read_text())


def build_full_unet(family: str = "sd15", seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A full-size UNet with random weights. ``device="meta"`` builds shapes only, in a fraction of a second."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in full_config(family, "unet").items() if not k.startswith("_")}
    if device == "meta":
        with torch.device("meta"):
            return UNet2DConditionModel(**config).eval()
    torch.manual_seed(seed)
    return UNet2DConditionModel(**config).to(device=device, dtype=dtype).eval()


def build_full_text_encoder(family: str = "sd15", component: str = "text_encoder", seed: int = 0, device="cpu"):
    """A full-size CLIP text encoder with random weights (``device="meta"`` for shapes only)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    raw = full_config(family, component)
    cls = CLIPTextModelWithProjection if raw["architectures"][0].endswith("WithProjection") else CLIPTextModel
    config = CLIPTextConfig(**{k: v for k, v in raw.items() if k != "architectures"})
    if device == "meta":
        with torch.device("meta"):
            return cls(config).eval()
    torch.manual_seed(seed)
    return cls(config).to(device).eval()


def build_full_pipeline(family: str = "sd15", seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A full-size pipeline with random weights and the tiny tokenizer (token ids stay inside the real vocab)."""
    import tempfile

    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers import schedulers as sched_mod

    index = json.loads((full_config_dir(family) / "model_index.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = tiny_clip_tokenizer(tmp)
    vae_config = {k: v for k, v in full_config(family, "vae").items() if not k.startswith("_")}
    torch.manual_seed(seed)
    parts: dict[str, Any] = {
        "unet": build_full_unet(family, seed, device, dtype),
        "vae": AutoencoderKL(**vae_config).to(device=device, dtype=dtype).eval(),
        "text_encoder": build_full_text_encoder(family, "text_encoder", seed, device).to(dtype=dtype),
        "tokenizer": tokenizer,
    }
    sched_raw = full_config(family, "scheduler")
    parts["scheduler"] = getattr(sched_mod, sched_raw["_class_name"]).from_config(sched_raw)
    if "text_encoder_2" in index:
        parts["text_encoder_2"] = build_full_text_encoder(family, "text_encoder_2", seed + 1, device).to(dtype=dtype)
        parts["tokenizer_2"] = tokenizer
    else:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    cls = StableDiffusionXLPipeline if index["_class_name"] == "StableDiffusionXLPipeline" else StableDiffusionPipeline
    return cls(**parts)
