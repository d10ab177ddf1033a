"""FLUX.1 and SD3.x adapter files: every dialect reads to the same deltas, fused projections round-trip bit for bit,
and diffusers' own loader (the oracle) applies what lorastack reads and writes the same way."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorastack.adapters import InvalidAdapterError, UnsupportedAdapterError, parse_state_dict, read_adapter
from lorastack.adapters.writing import diffusers_state_dict, kohya_state_dict, write_adapter
from lorastack.testing.adapters import TRANSFORMER_TARGETS, make_peft_lora, save_diffusers_lora
from lorastack.testing.models import build_tiny_pipeline
from lorastack.testing.transformer_adapters import make_original_lora, original_deltas, original_state_dict


@pytest.fixture(scope="module")
def flux():
    return build_tiny_pipeline("flux")


@pytest.fixture(scope="module")
def sd35():
    return build_tiny_pipeline("sd3.5")


def _close(deltas: dict, expected: dict, atol: float = 1e-6) -> None:
    assert set(deltas) == set(expected), sorted(set(deltas) ^ set(expected))[:5]
    for name, d in expected.items():
        torch.testing.assert_close(deltas[name].reshape(d.shape), d, atol=atol, rtol=1e-5, msg=name)


def _weights(transformer) -> dict[str, torch.Tensor]:
    """Every Linear's weight by module path (the base layer's under a peft wrapper)."""
    out = {}
    for name, m in transformer.named_modules():
        base = getattr(m, "base_layer", None)
        if isinstance(base, torch.nn.Linear):
            out[name] = base.weight.detach().clone()
        elif isinstance(m, torch.nn.Linear) and "lora_" not in name and "base_layer" not in name:
            out[name] = m.weight.detach().clone()
    return out


@pytest.mark.parametrize("family", ["flux", "sd3.5"])
@pytest.mark.parametrize("dialect", ["kohya", "bfl", "bfl-kohya", "bfl-bare"])
@pytest.mark.parametrize("kind", ["lora", "lokr"])
def test_original_dialects_read_to_the_deltas_of_their_matrices(family, dialect, kind, flux, sd35):
    pipe, fam = (flux, "flux") if family == "flux" else (sd35, "sd3")
    layers = make_original_lora(pipe, fam, kind=kind, seed=3)
    adapter = parse_state_dict(original_state_dict(layers, dialect))
    assert adapter.family == fam and not adapter.unrecognized_keys
    assert adapter.source_format == ("kohya" if dialect == "kohya" else "bfl")
    _close(adapter.deltas(), original_deltas(layers))


def test_xlabs_reads_like_diffusers_loads_it(flux):
    attention = ("img_attn.qkv", "txt_attn.qkv", "img_attn.proj", "txt_attn.proj")
    layers = make_original_lora(
        flux, "flux", rank=4, alpha=4.0, where=lambda s: s.original.partition(".")[2].partition(".")[2] in attention
    )
    sd = original_state_dict(layers, "xlabs")
    adapter = parse_state_dict(sd)
    assert adapter.key_styles == ("xlabs",) and adapter.family == "flux"
    _close(adapter.deltas(), original_deltas(layers))
    _oracle(flux, {k: v.clone() for k, v in sd.items()}, adapter)


def _oracle(pipe, state_dict, adapter, atol=1e-5) -> None:
    """diffusers loads ``state_dict`` (no key left over), fuses it, and every weight is base + lorastack's delta."""
    before = _weights(pipe.transformer)
    pipe.load_lora_weights(state_dict, adapter_name="oracle")
    try:
        assert not any("lora" in n for n, _ in pipe.transformer.named_buffers())
        pipe.fuse_lora(components=["transformer"], lora_scale=1.0)
        after = _weights(pipe.transformer)
        pipe.unfuse_lora(components=["transformer"])
    finally:
        pipe.unload_lora_weights()
    deltas = adapter.deltas()
    for name, w in after.items():
        expected = before[name] + deltas.get(f"transformer.{name}", torch.zeros_like(w)).reshape(w.shape)
        torch.testing.assert_close(w, expected, atol=atol, rtol=1e-5, msg=name)


def test_kohya_flux_loads_in_diffusers_like_lorastack_reads_it(flux):
    # diffusers' kohya converter hard-codes the full-size single-block split (3072 × 3 + 12288), and names the
    # embedders it converts without the "transformer." prefix its loader keeps (they are dropped): double blocks
    layers = make_original_lora(flux, "flux", seed=5, where=lambda s: s.original.startswith("double_blocks"))
    sd = original_state_dict(layers, "kohya")
    adapter = parse_state_dict(sd)
    _oracle(flux, dict(sd), adapter)


def _peft_parts(pipe, seed=1, rank=4, alpha=8.0):
    return make_peft_lora(pipe, ("transformer",), rank=rank, alpha=alpha, seed=seed, unet_targets=TRANSFORMER_TARGETS)


@pytest.mark.parametrize("family", ["flux", "sd3.5"])
def test_peft_dialects_read_alike_and_diffusers_agrees(family, flux, sd35, tmp_path):
    pipe = flux if family == "flux" else sd35
    parts = _peft_parts(pipe)
    path = save_diffusers_lora(pipe, tmp_path / "peft.safetensors", parts)
    adapter = read_adapter(path)
    assert adapter.family == ("flux" if family == "flux" else "sd3") and adapter.alpha_source == "metadata"
    _, state = parts["transformer"]
    # un-prefixed peft save (alpha = rank: scale 1 without metadata), and OneTrainer's flattened names with alphas
    bare = parse_state_dict(state)
    onetrainer = {}
    for key, t in state.items():
        module, _, suffix = key.rpartition(".lora_")
        flat = "lora_transformer_" + module.replace(".", "_")
        onetrainer[f"{flat}.{'lora_down' if suffix.startswith('A') else 'lora_up'}.weight"] = t
        onetrainer[f"{flat}.alpha"] = torch.tensor(8.0)
    trainer = parse_state_dict(onetrainer)
    assert trainer.key_styles == ("onetrainer",)
    _close(trainer.deltas(), adapter.deltas())
    scale = 8.0 / 4
    _close({k: v * scale for k, v in bare.deltas().items()}, adapter.deltas())
    _oracle(pipe, str(path), adapter)


def test_kohya_round_trips_bit_for_bit(flux, sd35):
    for pipe, fam, kind in (
        (flux, "flux", "lora"),
        (flux, "flux", "lokr"),
        (sd35, "sd3", "lora"),
        (sd35, "sd3", "lokr"),
    ):
        sd = original_state_dict(make_original_lora(pipe, fam, kind=kind, seed=7), "kohya")
        tensors, header = kohya_state_dict(parse_state_dict(sd), fam)
        assert set(tensors) == set(sd), sorted(set(tensors) ^ set(sd))[:4]
        assert all(torch.equal(tensors[k], sd[k]) for k in sd), fam
        assert header["ss_base_model_version"] == {"flux": "flux1", "sd3": "sd3"}[fam]


def test_bfl_round_trips_bit_for_bit(flux, tmp_path):
    sd = original_state_dict(make_original_lora(flux, "flux", seed=8), "bfl")
    src = tmp_path / "bfl.safetensors"
    save_file(sd, str(src))
    out = write_adapter(read_adapter(src), tmp_path / "out.safetensors", format="bfl")
    back = load_file(str(out))
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_separate_projections_fuse_block_diagonally(flux, tmp_path):
    parts = _peft_parts(flux, seed=4, rank=2, alpha=3.0)
    adapter = read_adapter(save_diffusers_lora(flux, tmp_path / "p.safetensors", parts))
    tensors, _ = kohya_state_dict(adapter, "flux")
    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    assert tensors[f"{qkv}.lora_down.weight"].shape == (6, 16)  # rank 3 × 2
    assert float(tensors[f"{qkv}.alpha"]) == pytest.approx(3.0 / 2 * 6)  # each projection keeps scale 1.5
    linear1 = tensors["lora_unet_single_blocks_0_linear1.lora_up.weight"]
    assert linear1.shape == (3 * 16 + 64, 8) and torch.count_nonzero(linear1[:16, 2:]) == 0
    _close(parse_state_dict(tensors).deltas(), adapter.deltas())
    # and back to diffusers, which loads every key
    written = write_adapter(parse_state_dict(tensors), tmp_path / "d.safetensors", format="diffusers", family="flux")
    _oracle(flux, str(written), adapter)


def test_kohya_to_diffusers_loads_every_key(flux, tmp_path):
    layers = make_original_lora(flux, "flux", seed=9)
    adapter = parse_state_dict(original_state_dict(layers, "kohya"))
    tensors, header = diffusers_state_dict(adapter, "flux")
    assert all(k.startswith("transformer.") for k in tensors)
    assert json.loads(header["lora_adapter_metadata"])["transformer.r"] == 4
    written = write_adapter(adapter, tmp_path / "d.safetensors", format="diffusers")
    state = type(flux).lora_state_dict(str(written))
    flux.load_lora_weights(str(written), adapter_name="all")
    loaded = {n for n, _ in flux.transformer.named_parameters() if ".lora_A.all" in n}
    flux.unload_lora_weights()
    assert {k.removeprefix("transformer.").removesuffix(".lora_A.weight") for k in state if "lora_A" in k} == {
        n.removesuffix(".lora_A.all.weight") for n in loaded
    }
    _oracle(flux, str(written), adapter)


def test_lokr_on_fused_modules_is_refused_in_diffusers_form(flux):
    adapter = parse_state_dict(original_state_dict(make_original_lora(flux, "flux", kind="lokr"), "kohya"))
    piece = adapter.layers["transformer.transformer_blocks.0.attn.to_k"]
    assert type(piece).__name__ == "RowSliceLayer" and piece.kind == "lokr" and piece.out_features == 16
    with pytest.raises(UnsupportedAdapterError, match="holds only LoRA layers"):
        diffusers_state_dict(adapter, "flux")
    only_q = adapter.select(["transformer.transformer_blocks.0.attn.to_q"])
    with pytest.raises(UnsupportedAdapterError, match="fused double_blocks.0.img_attn.qkv"):
        kohya_state_dict(only_q, "flux")


def test_probe_tells_flux_from_sd3(flux, sd35):
    sd3 = parse_state_dict(original_state_dict(make_original_lora(sd35, "sd3"), "kohya"))
    assert sd3.family == "sd3" and "text_encoder_3" not in sd3.components()
    fx = parse_state_dict(original_state_dict(make_original_lora(flux, "flux"), "kohya"))
    assert fx.family == "flux"
    # diffusers names of the double blocks alone fit both at a width no real model has; the header decides
    tensors, _ = diffusers_state_dict(fx, "flux")
    doubles = parse_state_dict({k: v for k, v in tensors.items() if k.startswith("transformer.transformer_blocks.")})
    assert fx.select(doubles.layers).family == "flux"  # the original names said so
    assert doubles.probe.family == "unknown" and doubles.probe.candidates == ("flux", "sd3")
    from lorastack.adapters.probe import probe_family

    assert probe_family(doubles.layers, {"modelspec.architecture": "flux-1-dev/lora"}).family == "flux"
    assert probe_family(doubles.layers, {"ss_base_model_version": "sd3"}).family == "sd3"
    with pytest.raises(UnsupportedAdapterError, match="--family flux or --family sd3"):
        kohya_state_dict(doubles, doubles.family)


def test_text_encoders_in_kohya_names():
    t5 = "encoder_block_0_layer_1_DenseReluDense_wi_0"
    sd = {
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.randn(2, 32),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.randn(32, 2),
        f"lora_te3_{t5}.lora_down.weight": torch.randn(2, 32),
        f"lora_te3_{t5}.lora_up.weight": torch.randn(37, 2),
    }
    flux = parse_state_dict(sd)
    assert set(flux.layers) == {
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
        "text_encoder_2.encoder.block.0.layer.1.DenseReluDense.wi_0",
    }
    assert flux.family == "flux"
    assert set(kohya_state_dict(flux, "flux")[0]) == set(sd) | {
        k.replace("lora_down.weight", "alpha") for k in sd if "down" in k
    }
    proj = "lora_unet_joint_blocks_0_x_block_attn_proj"
    joint = {f"{proj}.lora_down.weight": torch.randn(2, 16), f"{proj}.lora_up.weight": torch.randn(16, 2)}
    sd3 = parse_state_dict({**sd, **joint})
    assert sd3.family == "sd3" and "text_encoder_3.encoder.block.0.layer.1.DenseReluDense.wi_0" in sd3.layers


@pytest.mark.parametrize(
    "name, rows",
    [("lora_unet_double_blocks_0_img_attn_qkv", 47), ("lora_unet_single_blocks_0_linear1", 40)],
)
def test_malformed_fused_shapes_are_one_line_errors(name, rows):
    sd = {f"{name}.lora_down.weight": torch.randn(2, 16), f"{name}.lora_up.weight": torch.randn(rows, 2)}
    with pytest.raises(InvalidAdapterError) as e:
        parse_state_dict(sd)
    assert "\n" not in str(e.value) and str(rows) in str(e.value) and name in str(e.value)


def test_bfl_is_refused_for_unet_adapters(tmp_path):
    sd = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(2, 8, 1, 1),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(8, 2, 1, 1),
    }
    with pytest.raises(UnsupportedAdapterError, match="FLUX.1 and SD 3.x"):
        write_adapter(parse_state_dict(sd), tmp_path / "x.safetensors", format="bfl", family="sd1")
