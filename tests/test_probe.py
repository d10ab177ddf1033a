"""Family probe: right on tiny-model adapters and on the shapes of the full-size configs; unknown over a guess."""

import pytest
import torch
from adapter_cases import make_case

from lorastack.adapters import LoRALayer, probe_family, read_adapter
from lorastack.testing.models import build_full_text_encoder, build_full_unet, load_pipeline


def _shape_adapter(model, component, keep):
    """Rank-1 LoRA layers shaped for every Linear/Conv2d of ``model`` whose path satisfies ``keep``."""
    layers = {}
    for name, m in model.named_modules():
        if not keep(name):
            continue
        if isinstance(m, torch.nn.Linear):
            layers[name] = LoRALayer(torch.zeros(1, m.in_features), torch.zeros(m.out_features, 1))
        elif isinstance(m, torch.nn.Conv2d):
            layers[name] = LoRALayer(
                torch.zeros(1, m.in_channels, *m.kernel_size), torch.zeros(m.out_channels, 1, 1, 1)
            )
    prefix = "" if component == "unet" or any(n.startswith("text_model.") for n in layers) else "text_model."
    return {f"{component}.{prefix}{name}": layer for name, layer in layers.items()}


def attention(name):
    return ".attn1." in name or ".attn2." in name


@pytest.mark.parametrize("config, family", [("sd15", "sd1"), ("sd21", "sd2"), ("sdxl", "sdxl")])
def test_full_size_attention_loras(config, family):
    unet = build_full_unet(config, device="meta")
    probe = probe_family(_shape_adapter(unet, "unet", attention))
    assert probe.family == family, probe


@pytest.mark.parametrize("config, family", [("sd15", "sd1"), ("sd21", "sd2"), ("sdxl", "sdxl")])
def test_full_size_unet_and_text_encoder_loras(config, family):
    layers = _shape_adapter(build_full_unet(config, device="meta"), "unet", lambda n: ".attentions." in n)
    layers.update(
        _shape_adapter(build_full_text_encoder(config, device="meta"), "text_encoder", lambda n: "layers" in n)
    )
    if config == "sdxl":
        te2 = build_full_text_encoder(config, "text_encoder_2", device="meta")
        layers.update(_shape_adapter(te2, "text_encoder_2", lambda n: "layers" in n))
    assert probe_family(layers).family == family


def test_text_encoder_only_loras():
    sd21 = _shape_adapter(build_full_text_encoder("sd21", device="meta"), "text_encoder", lambda n: "layers" in n)
    assert probe_family(sd21).family == "sd2"
    # a CLIP-L-only LoRA fits SD1.x and SDXL's first encoder alike: say so instead of guessing
    sd15 = _shape_adapter(build_full_text_encoder("sd15", device="meta"), "text_encoder", lambda n: "layers" in n)
    probe = probe_family(sd15)
    assert probe.family == "unknown" and probe.candidates == ("sd1", "sdxl")


def test_tiny_model_adapters(tiny_sd1_dir, tiny_sdxl_dir, tmp_path):
    sd1 = load_pipeline(tiny_sd1_dir)
    kohya = read_adapter(make_case(sd1, "kohya", tmp_path / "k.safetensors"))
    assert kohya.family == "sd1"  # 1x1-conv attention projections are SD1.x's alone
    xl = read_adapter(make_case(load_pipeline(tiny_sdxl_dir), "peft", tmp_path / "x.safetensors"))
    assert xl.family == "sdxl"
    # attention-only at a width no real model has: SD1.x and SD2.x share that topology
    attention_only = read_adapter(make_case(sd1, "peft", tmp_path / "a.safetensors"))
    assert attention_only.family == "unknown" and attention_only.probe.candidates == ("sd1", "sd2")


def test_header_declarations_count_but_must_agree_with_shapes(tiny_sd1_dir, tmp_path):
    pipe = load_pipeline(tiny_sd1_dir)
    layers = read_adapter(make_case(pipe, "peft", tmp_path / "a.safetensors")).layers
    declared = probe_family(layers, {"modelspec.architecture": "stable-diffusion-v1/lora"})
    assert declared.family == "sd1"
    assert probe_family(layers, {"ss_base_model_version": "sd_v2"}).family == "sd2"
    # topology (attention in the first level: not SDXL's) is a guess a declaration overrules; a width is not
    topology = probe_family(layers, {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"})
    assert topology.family == "sdxl" and "the declaration overrules the topology" in topology.evidence
    kohya = read_adapter(make_case(pipe, "kohya", tmp_path / "k.safetensors")).layers  # 1x1-conv projections: SD1
    conflict = probe_family(kohya, {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"})
    assert conflict.family == "unknown" and conflict.candidates == ()
    assert "the evidence contradicts itself" in conflict.evidence


def _cross_attention_lora(width):
    name = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    return {name: LoRALayer(torch.zeros(1, width), torch.zeros(320, 1))}


def test_a_declaration_against_the_widths_is_ignored():
    sd15 = _cross_attention_lora(768)  # SD 1.x's cross-attention width, nobody else's
    probe = probe_family(sd15, {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"})
    assert probe.family == "sd1" and probe.candidates == ("sd1",) and probe.declared is None
    assert any("ignored" in e and "modelspec.architecture" in e for e in probe.evidence), probe.evidence
    agreed = probe_family(sd15, {"ss_base_model_version": "sd_v1"})
    assert agreed.family == "sd1" and agreed.declared == "ss_base_model_version"
    assert probe_family(sd15).declared is None


def test_declared_records_the_key_that_decided(tiny_sd1_dir, tmp_path):
    layers = read_adapter(make_case(load_pipeline(tiny_sd1_dir), "peft", tmp_path / "a.safetensors")).layers
    probe = probe_family(layers, {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"})
    assert probe.family == "sdxl" and probe.declared == "modelspec.architecture"
    assert probe_family(layers).declared is None
    long = probe_family(layers, {"ss_base_model_version": "sdxl" + "x" * 5000 + "\n"})
    assert long.declared == "ss_base_model_version" and all(len(e) < 200 and e.isprintable() for e in long.evidence)
