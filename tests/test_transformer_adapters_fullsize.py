"""Full-size FLUX.1-dev and SD3.5 key grammar: built on the meta device from the real configs.

The expected kohya names are derived the way sd-scripts enumerates modules (networks/lora_flux.py and lora_sd3.py
flatten ``lora_unet`` + the path of every Linear inside each DoubleStreamBlock / SingleStreamBlock /
SingleDiTBlock, plus the embedders its ``in_dims`` / ``emb_dims`` options add), from the Linear children those
blocks have in sd-scripts' library/flux_models.py and library/sd3_models.py; ComfyUI maps exactly these names
(``lora_unet_`` + its diffusion-model key, flattened). The counts and the optional parts (SD3.5 Medium's second
attention, the context-pre-only last joint block) come from the diffusers model.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lorastack.adapters import parse_state_dict
from lorastack.adapters.writing import diffusers_state_dict, kohya_state_dict
from lorastack.testing.transformer_adapters import make_original_lora, original_state_dict

FLUX_DEV = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
SD35_LARGE = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=38,
    attention_head_dim=64,
    num_attention_heads=38,
    joint_attention_dim=4096,
    caption_projection_dim=2432,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=192,
    qk_norm="rms_norm",
)
SD35_MEDIUM = {
    **SD35_LARGE,
    "num_layers": 24,
    "num_attention_heads": 24,
    "caption_projection_dim": 1536,
    "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)),
}
# Linear children of the blocks, as sd-scripts' flux_models.py / sd3_models.py define them
FLUX_DOUBLE = tuple(f"{s}_{c}" for s in ("img", "txt") for c in ("mod.lin", "attn.qkv", "attn.proj", "mlp.0", "mlp.2"))
FLUX_SINGLE = ("linear1", "linear2", "modulation.lin")
FLUX_IN = (
    "img_in",
    "txt_in",
    *(f"{e}.{p}" for e in ("time_in", "vector_in", "guidance_in") for p in ("in_layer", "out_layer")),
)
SD3_STREAM = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1")
SD3_EMB = ("context_embedder", "t_embedder.mlp.0", "t_embedder.mlp.2", "x_embedder.proj", "y_embedder.mlp.0",
           "y_embedder.mlp.2", "final_layer.adaLN_modulation.1", "final_layer.linear")  # fmt: skip


def _kohya(path: str) -> str:
    return "lora_unet_" + path.replace(".", "_")


def _flux_names(config) -> set[str]:
    names = {_kohya(f"double_blocks.{i}.{c}") for i in range(config["num_layers"]) for c in FLUX_DOUBLE}
    names |= {_kohya(f"single_blocks.{i}.{c}") for i in range(config["num_single_layers"]) for c in FLUX_SINGLE}
    # sd-scripts does not train the final layer, but ComfyUI and diffusers' kohya converter take its names
    return names | {_kohya(c) for c in (*FLUX_IN, "final_layer.linear", "final_layer.adaLN_modulation.1")}


def _sd3_names(config) -> set[str]:
    n, dual = config["num_layers"], set(config.get("dual_attention_layers", ()))
    names = set()
    for i in range(n):
        names |= {_kohya(f"joint_blocks.{i}.x_block.{c}") for c in SD3_STREAM}
        if i in dual:
            names |= {_kohya(f"joint_blocks.{i}.x_block.attn2.{c}") for c in ("qkv", "proj")}
        # the last block's context stream is pre-only: its queries, keys, values and modulation
        context = ("attn.qkv", "adaLN_modulation.1") if i == n - 1 else SD3_STREAM
        names |= {_kohya(f"joint_blocks.{i}.context_block.{c}") for c in context}
    return names | {_kohya(c) for c in SD3_EMB}


def _meta_pipe(family: str, config: dict):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    cls = FluxTransformer2DModel if family == "flux" else SD3Transformer2DModel
    with torch.device("meta"):
        return SimpleNamespace(transformer=cls(**config))


def _modules(keys) -> set[str]:
    return {k.partition(".")[0] for k in keys}


@pytest.mark.parametrize(
    "family, config, names",
    [("flux", FLUX_DEV, _flux_names), ("sd3", SD35_MEDIUM, _sd3_names), ("sd3", SD35_LARGE, _sd3_names)],
    ids=["flux-dev", "sd3.5-medium", "sd3.5-large"],
)
def test_full_size_kohya_names_match_sd_scripts(family, config, names):
    pipe = _meta_pipe(family, config)
    expected = names(config)
    layers = make_original_lora(pipe, family, rank=1, alpha=1.0, std=0.01)
    kohya = original_state_dict(layers, "kohya")
    assert _modules(kohya) == expected  # the generator itself follows the grammar
    adapter = parse_state_dict(kohya)
    assert adapter.family == family and not adapter.unrecognized_keys
    assert any(f"width {w}" in e for e in adapter.probe.evidence for w in (3072, 1536, 2432))
    tensors, _ = kohya_state_dict(adapter, family)
    assert _modules(tensors) == expected and all(torch.equal(tensors[k], kohya[k]) for k in kohya)
    # to diffusers: every key names a Linear/Conv of the diffusers model, each one once
    diffusers, _ = diffusers_state_dict(adapter, family)
    modules = {n for n, m in pipe.transformer.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)}
    written = {k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in diffusers}
    assert written <= modules and len(written) == len(adapter.layers)
    # and from those separate projections back to sd-scripts' names (block-diagonal where fused)
    again, _ = kohya_state_dict(parse_state_dict(diffusers), family)
    assert _modules(again) == expected
