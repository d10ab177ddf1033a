"""FLUX.1 / SD3 single files: bad parts are refused from headers, before any weight is read, with one line each;
the converters and the shipped configs agree with diffusers' own at full size (shapes on the meta device)."""

import pytest
import torch
from safetensors.torch import save_file

from lorastack.core import transformer_bases
from lorastack.core.base import checkpoint_family, load_base
from lorastack.core.errors import BaseModelError
from lorastack.testing.full_models import FULL_TRANSFORMER_CONFIGS, build_full_component, build_full_transformer
from lorastack.testing.models import load_pipeline
from lorastack.testing.transformer_files import save_transformer_files, transformer_state


@pytest.fixture
def no_weights(monkeypatch):
    """Reading a weight fails the test: every refusal here must come from the headers."""

    def read(*args, **kwargs):
        raise AssertionError("weights were read")

    monkeypatch.setattr(transformer_bases, "_load_weights", read)


@pytest.fixture(scope="module")
def flux_files(tiny_pipe_dir, tmp_path_factory):
    return save_transformer_files(load_pipeline(tiny_pipe_dir("flux")), tmp_path_factory.mktemp("flux-files"))


@pytest.fixture(scope="module")
def sd3_files(tiny_pipe_dir, tmp_path_factory):
    return save_transformer_files(load_pipeline(tiny_pipe_dir("sd3.5")), tmp_path_factory.mktemp("sd3-files"))


def _refused(match, source, **kwargs):
    with pytest.raises(BaseModelError, match=match) as info:
        load_base(source, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_flux_transformer_without_its_parts_names_them_and_their_flags(flux_files, tiny_flux_dir, no_weights):
    message = _refused("a FLUX.1 transformer without", flux_files["transformer"], config=tiny_flux_dir)
    assert "--text-encoder CLIP-L" in message and "--text-encoder-2 T5 v1.1 XXL" in message and "--vae" in message
    only = _refused(
        "without T5 v1.1 XXL; give --text-encoder-2", flux_files["transformer"], config=tiny_flux_dir,
        text_encoder=flux_files["text_encoder"], vae=flux_files["vae"],
    )  # fmt: skip
    assert "--vae" not in only


def test_truncated_component(flux_files, tiny_flux_dir, tmp_path, no_weights):
    cut = tmp_path / "clip_l.safetensors"
    cut.write_bytes(flux_files["text_encoder"].read_bytes()[:-100])
    parts = {**flux_files, "text_encoder": cut}
    _refused(r"clip_l.safetensors: not a readable safetensors file: .*truncated", parts.pop("transformer"),
             config=tiny_flux_dir, **parts)  # fmt: skip


def test_component_of_the_wrong_kind(flux_files, tiny_flux_dir, no_weights):
    parts = {**flux_files, "text_encoder": flux_files["vae"]}
    _refused("--text-encoder .*ae.safetensors: holds a VAE, but --text-encoder takes CLIP-L", parts.pop("transformer"),
             config=tiny_flux_dir, **parts)  # fmt: skip


def test_t5_of_the_wrong_width(flux_files, tiny_flux_dir, tmp_path, no_weights):
    narrow = tmp_path / "t5.safetensors"
    state = {
        k: v[..., :16].contiguous() if k == "shared.weight" else v
        for k, v in _load(flux_files["text_encoder_2"]).items()
    }
    save_file(state, str(narrow))
    parts = {**flux_files, "text_encoder_2": narrow}
    _refused("a T5 encoder of width 16, but the transformer takes T5 features of width 32 .its joint_attention_dim.",
             parts.pop("transformer"), config=tiny_flux_dir, **parts)  # fmt: skip


def test_sd3_transformer_with_flux_components(sd3_files, flux_files, tiny_sd3_dir, no_weights):
    flux_parts = {k: v for k, v in flux_files.items() if k != "transformer"}
    _refused(
        "--text-encoder-2 .*t5xxl.safetensors: holds a T5 text encoder, but --text-encoder-2 takes CLIP-G; that is "
        "--text-encoder-3 of a SD3 base", sd3_files["transformer"], config=tiny_sd3_dir, **flux_parts,
    )  # fmt: skip
    _refused("a FLUX.1 base has no text_encoder_3", flux_files["transformer"], text_encoder_3=sd3_files["vae"])


def test_wrong_size_against_the_config_and_parts_as_the_base(
    flux_files, sd3_files, tiny_sd3_dir, tmp_path, no_weights
):
    parts = {k: v for k, v in sd3_files.items() if k != "transformer"}
    # tiny parts with the shipped (full-size) configs
    _refused("clip_l.safetensors: a CLIP text encoder of width 32, but --text-encoder of this SD3 base is CLIP-L of "
             "width 768", sd3_files["transformer"], **parts)  # fmt: skip
    config = _config_copy(tiny_sd3_dir, tmp_path)
    transformer = config / "transformer" / "config.json"
    transformer.write_text(transformer.read_text().replace('"num_attention_heads": 2', '"num_attention_heads": 4'))
    _refused(r"transformer.safetensors: pos_embed.pos_embed has shape \[1, 256, 16\] but the transformer config makes "
             r"\[1, 256, 32\]", sd3_files["transformer"], config=config, **parts)  # fmt: skip
    _refused("holds a T5 text encoder, not a base model; give it as --text-encoder", flux_files["text_encoder_2"])
    _refused(
        "not a T5 tokenizer folder", sd3_files["transformer"], config=tiny_sd3_dir, t5_tokenizer=tmp_path, **parts
    )


def _config_copy(folder, tmp_path, *leave_out):
    import shutil

    copy = tmp_path / "config"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("*.safetensors", *leave_out))
    return copy


def test_missing_t5_tokenizer_says_how_to_supply_it(flux_files, tiny_flux_dir, tmp_path, no_weights):
    parts = {k: v for k, v in flux_files.items() if k != "transformer"}
    config = _config_copy(tiny_flux_dir, tmp_path, "tokenizer_2")
    message = _refused(
        "needs the T5 tokenizer", flux_files["transformer"], config=config, hf_cache_dir=tmp_path / "hub", **parts
    )
    assert "--t5-tokenizer FOLDER" in message and "black-forest-labs/FLUX.1-dev" in message


def test_components_only_complete_transformer_single_files(tiny_flux_dir, flux_files):
    _refused("complete a FLUX.1 or SD3 single file", tiny_flux_dir, vae=flux_files["vae"])


def _load(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_checkpoint_family_and_variant_from_keys(tmp_path):
    def ckpt(keys):
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.safetensors"
        save_file({k: torch.zeros(2) for k in keys}, str(path))
        return path

    from lorastack.core.base import checkpoint_variant

    flux = ["model.diffusion_model.double_blocks.0.img_attn.qkv.weight"]
    sd3 = ["joint_blocks.0.x_block.attn.qkv.weight"]
    assert checkpoint_family(ckpt(flux)) == ("flux", False)
    assert checkpoint_variant(ckpt([*flux, "model.diffusion_model.guidance_in.in_layer.weight"])) == "flux1-dev"
    assert checkpoint_variant(ckpt(flux)) == "flux1-schnell"
    assert checkpoint_variant(ckpt(sd3)) == "sd3-medium"
    assert checkpoint_variant(ckpt([*sd3, "joint_blocks.0.x_block.attn2.qkv.weight"])) == "sd3.5-medium"
    assert checkpoint_variant(ckpt([*sd3, "joint_blocks.0.x_block.attn.ln_q.weight"])) == "sd3.5-large"
    with pytest.raises(BaseModelError, match="scaled fp8"):
        checkpoint_family(ckpt([*flux, "scaled_fp8"]))


# --- full size, shapes only -------------------------------------------------------------------------------------

DIFFUSERS_TYPES = {
    "flux1-dev": "flux-dev",
    "flux1-schnell": "flux-schnell",
    "sd3-medium": "sd3",
    "sd3.5-medium": "sd35_medium",
    "sd3.5-large": "sd35_large",
}


@pytest.mark.parametrize("name", FULL_TRANSFORMER_CONFIGS)
def test_shipped_configs_match_diffusers_detection_and_converters(name):
    """The shipped config's model, written in the original layout, is what diffusers detects as that model, and
    diffusers' converter maps it back onto the model's own keys and shapes (so do lorastack's checks)."""
    from diffusers.loaders.single_file_utils import (
        convert_flux_transformer_checkpoint_to_diffusers,
        convert_sd3_transformer_checkpoint_to_diffusers,
        infer_diffusers_model_type,
    )

    from lorastack.core.checkpoint_parts import Part, classify, variant

    model = build_full_transformer(name)
    original = transformer_state(model)
    checkpoint = {"model.diffusion_model." + k: v for k, v in original.items()}
    assert infer_diffusers_model_type(checkpoint) == DIFFUSERS_TYPES[name]
    convert = convert_flux_transformer_checkpoint_to_diffusers if name.startswith("flux") else (
        convert_sd3_transformer_checkpoint_to_diffusers
    )  # fmt: skip
    converted, expected = convert(dict(checkpoint)), model.state_dict()
    assert converted.keys() == expected.keys()
    assert all(converted[k].shape == expected[k].shape for k in expected)
    shapes = {k: tuple(v.shape) for k, v in original.items()}
    part = Part(None, classify(shapes)[0], "", shapes, {})
    assert variant(part) == name
    transformer_bases._check_keys("transformer", part, model, dict(model.config))


def test_flux_converter_values_match_diffusers_at_full_width():
    """diffusers' Flux converter only works at FLUX.1's width (3072); lorastack's takes it from the config. Both
    see the same tensors with FLUX.1's row counts (one column each, numbered) and must give the same values."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from lorastack.core.transformer_layouts import flux_to_diffusers

    model = build_full_transformer("flux1-dev")
    start, thin = 0, {}
    for key, value in transformer_state(model).items():
        thin[key] = torch.arange(start, start + value.shape[0], dtype=torch.float64)[:, None]
        start += value.shape[0]
    ours = flux_to_diffusers(thin, dict(model.config))
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(thin))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize(
    "name, component, width",
    [("flux1-dev", "text_encoder", 768), ("flux1-dev", "text_encoder_2", 4096), ("flux1-dev", "vae", None),
     ("sd3.5-large", "text_encoder_2", 1280), ("sd3-medium", "vae", None)],
)  # fmt: skip
def test_full_size_parts_pass_the_header_checks(name, component, width):
    from lorastack.core.checkpoint_parts import Part, classify
    from lorastack.testing.transformer_files import component_state

    model = build_full_component(name, component)
    state = component_state(type("P", (), {component: model})(), component)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    part = Part(None, *classify(shapes)[:1], "", shapes, {})
    assert part.width == width
    transformer_bases._check_keys(component, part, model, dict(model.config) if component == "vae" else {})
