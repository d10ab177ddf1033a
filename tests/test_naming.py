"""Module naming: kohya/SGM ↔ canonical, checked against the real architectures and diffusers' own converter."""

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from lorastack.adapters.naming import (
    canonical_to_kohya,
    kohya_to_canonical,
    sgm_to_diffusers,
    split_flat,
)
from lorastack.testing.models import build_full_text_encoder, build_full_unet, load_pipeline
from lorastack.testing.single_file import UNET_PREFIX, unet_to_ldm

FULL = [("sd15", "text_encoder"), ("sd21", "text_encoder"), ("sdxl", "text_encoder"), ("sdxl", "text_encoder_2")]


@pytest.fixture(scope="module")
def full_unets():
    return {family: build_full_unet(family, device="meta") for family in ("sd15", "sd21", "sdxl")}


@pytest.mark.parametrize("family", ["sd15", "sd21", "sdxl"])
def test_vocabulary_covers_every_full_size_unet_module(family, full_unets):
    for name, _ in full_unets[family].named_modules():
        if name:
            assert split_flat(name.replace(".", "_")) == tuple(name.split(".")), name


@pytest.mark.parametrize("family, component", FULL)
def test_vocabulary_covers_every_full_size_text_encoder_module(family, component):
    model = build_full_text_encoder(family, component, device="meta")
    for name, _ in model.named_modules():
        if name:
            assert split_flat(name.replace(".", "_")) == tuple(name.split(".")), name


def _lora_targets(model):
    return [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


@pytest.mark.parametrize("family, sgm", [("sd15", False), ("sd15", True), ("sd21", False), ("sdxl", True)])
def test_kohya_names_round_trip_for_every_unet_layer(family, sgm, full_unets):
    with_attention = {i for i, t in enumerate(full_unets[family].config.up_block_types) if "CrossAttn" in t}
    for path in _lora_targets(full_unets[family]):
        name = f"unet.{path}"
        if sgm and family == "sd15":
            # SD1.x files in SGM spelling exist too (A1111-era tools); their upsampler index depends on attention
            from lorastack.adapters.naming import diffusers_to_sgm

            kohya = "lora_unet_" + diffusers_to_sgm(path, 2, with_attention).replace(".", "_")
        else:
            kohya = canonical_to_kohya(name, sgm=sgm)
        assert kohya_to_canonical(kohya) == name, kohya


@pytest.mark.parametrize("family, component", FULL)
def test_kohya_names_round_trip_for_every_text_encoder_layer(family, component):
    model = build_full_text_encoder(family, component, device="meta")
    for path in _lora_targets(model):
        canonical = f"{component}.{path if path.startswith('text_model.') else 'text_model.' + path}"
        kohya = canonical_to_kohya(canonical, te_numbered=family == "sdxl")
        assert "_text_model_" in kohya  # the spelling A1111/ComfyUI map, whatever transformers does
        assert kohya_to_canonical(kohya) == canonical


def test_unknown_names_are_not_guessed():
    assert kohya_to_canonical("lora_unet_down_blocks_0_flux_capacitor") is None
    assert kohya_to_canonical("lora_te_text_model_encoder_layers_0_to_q") is None  # a UNet word in a CLIP path
    assert kohya_to_canonical("lora_vae_encoder_conv_in") is None
    assert sgm_to_diffusers("input_blocks.1.7.proj_in") is None


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_original_layout_names_agree_with_diffusers_converter(family, tiny_pipe_dir):
    """Our diffusers→SGM names, fed to diffusers' own LDM→diffusers converter, give back the same UNet."""
    unet = load_pipeline(tiny_pipe_dir(family)).unet
    state = unet.state_dict()
    ldm = {UNET_PREFIX + k: v for k, v in unet_to_ldm(state, unet.config).items()}
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_original_layout_names_agree_for_full_size_configs(family, full_unets):
    unet = full_unets[family]
    state = {k: torch.empty(0) for k in unet.state_dict()}  # names only; the converter just renames
    ldm = {UNET_PREFIX + k: v for k, v in unet_to_ldm(state, unet.config).items()}
    assert set(convert_ldm_unet_checkpoint(ldm, dict(unet.config))) == set(state)
