"""Prompt tags (<lora:name:0.8>) and scale specifications."""

from dataclasses import astuple

import pytest

from lorastack.core.errors import ScaleError
from lorastack.core.prompts import add_trigger_words, extract_tags, misread_scale
from lorastack.core.scales import compile_scale, parse_lbw
from lorastack.core.sources import parse_lora_option, unique_names


def spec(denoiser, te, **extra):
    """What a tag with a denoiser and a text-encoder strength means, on any family's base."""
    return {"unet": denoiser, "transformer": denoiser, "text_encoder": te, "text_encoder_2": te,
            "text_encoder_3": te, **extra}  # fmt: skip


@pytest.mark.parametrize(
    "prompt, clean, tags",
    [
        ("a cat <lora:style:0.8>", "a cat", {"style": 0.8}),
        ("<lora:style>, a cat, <lyco:subject:-0.5>", "a cat", {"style": 1.0, "subject": -0.5}),
        ("a <LORA:s:0.6:0.9> cat", "a cat", {"s": spec(0.9, 0.6)}),
        ("x <lora:s:te=0.2:unet=1>", "x", {"s": spec(1.0, 0.2)}),
        (
            "x <lora:s:0.8:lbw=1,0,1>",
            "x",
            {"s": spec(0.8, 0.8, lbw="1,0,1")},
        ),
        ("a cat, <lora:a:1>, on a table", "a cat, on a table", {"a": 1.0}),
        # registry references, as --lora takes them: a tag after a colon is part of the name
        ("a cat <lora:me/style:v1:0.8>", "a cat", {"me/style:v1": 0.8}),
        ("a cat <lora:me/style:v1>", "a cat", {"me/style:v1": 1.0}),
        ("<lora:me/style@2:0.6:0.9>", "", {"me/style@2": spec(0.9, 0.6)}),
        ("<lora:me/style:v1:te=0.5>", "", {"me/style:v1": spec(1.0, 0.5)}),
        ("no tags", "no tags", {}),
        (
            "<lora:flux-style:0.8:single=0:double.3=0.5>",
            "",
            {"flux-style": spec({"scale": 0.8, "single": 0.0, "double.3": 0.5}, 0.8, unet=0.8)},
        ),
        ("<lora:s:joint.2=0>", "", {"s": spec({"scale": 1.0, "joint.2": 0.0}, 1.0, unet=1.0)}),
    ],
)
def test_tags(prompt, clean, tags):
    assert extract_tags(prompt) == (clean, tags)


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("<lora:style:0.5:strong>", "'strong' is not a number"),
        ("<lora::0.5>", "names no adapter"),
        ("<lora:s:1:2:3>", "at most two numbers"),
        ("<lora:s:foo=1>", "unknown key 'foo'"),
        ("<lora:s:nan>", "not a finite number"),
        ("a <lora:s:0.5 cat", "not closed"),
    ],
)
def test_bad_tags(prompt, message):
    with pytest.raises(ScaleError, match=message):
        extract_tags(prompt)


def test_a_word_after_a_colon_is_a_tag_unless_no_adapter_has_that_name():
    """``<lora:style:strong>`` names ``style:strong``; when nothing has that name, the error gives both readings."""
    assert extract_tags("<lora:style:strong>")[1] == {"style:strong": 1.0}
    error = misread_scale("style:strong", "no adapter named 'style:strong'")
    assert "'strong' is not a number" in str(error) and "no adapter is named 'style:strong'" in str(error)
    assert misread_scale("style", "missing") is None


def test_trigger_words_are_added_once():
    assert add_trigger_words("a cat", ["aawxbc", "Cat", "aawxbc", "figurine"]) == "a cat, aawxbc, figurine"
    assert add_trigger_words("", ["aawxbc"]) == "aawxbc"


def test_lora_option():
    assert astuple(parse_lora_option("style.safetensors")) == ("style", "style.safetensors", 1.0)
    assert astuple(parse_lora_option("dir/style.safetensors:0.8")) == ("style", "dir/style.safetensors", 0.8)
    # a registry reference keeps its readable name, the same a prompt tag gives it
    assert astuple(parse_lora_option("me/style:v2:0.8")) == ("me/style:v2", "me/style:v2", 0.8)
    assert astuple(parse_lora_option("me/style:v2")) == ("me/style:v2", "me/style:v2", 1.0)
    assert parse_lora_option("me/style:v2:0.8").name == next(iter(extract_tags("<lora:me/style:v2:0.8>")[1]))
    assert astuple(parse_lora_option("nick=a b.safetensors:-.5")) == ("nick", "a b.safetensors", -0.5)
    assert parse_lora_option("a b.safetensors").name == "a_b"
    names = [r.name for r in unique_names([parse_lora_option(v) for v in ("x.safetensors", "d/x.safetensors")])]
    assert names == ["x", "x-2"]
    with pytest.raises(ScaleError, match="names no adapter"):
        parse_lora_option(":0.5")
    # block scales as the prompt tags take them: the same dict either way
    option = parse_lora_option("me/flux:v1:0.8:single=0")
    assert (option.name, option.scale) == (
        "me/flux:v1",
        extract_tags("<lora:me/flux:v1:0.8:single=0>")[1]["me/flux:v1"],
    )
    assert option.scale["transformer"] == {"scale": 0.8, "single": 0.0}
    with pytest.raises(ScaleError, match="--lora 'x:double=loud'.*not a number"):
        parse_lora_option("x:double=loud")


def test_scale_specs():
    te = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    down = "unet.down_blocks.1.attentions.1.proj_in"
    sampler = "unet.down_blocks.1.downsamplers.0.conv"
    assert compile_scale(0.5, "sd1")(down) == 0.5
    spec = compile_scale({"scale": 2.0, "unet": {"down": {"block_1": [0.1, 0.3]}}, "text_encoder": 0.25}, "sd1")
    assert spec(down) == pytest.approx(0.6) and spec(sampler) == pytest.approx(0.6) and spec(te) == 0.5
    assert spec("unet.conv_in") == 2.0  # outside every block
    xl = parse_lbw([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], "sdxl")
    assert xl["BASE"] == 0 and xl["MID"] == 5 and xl["OUT05"] == 11
    lbw = compile_scale({"lbw": "0,1,1,1,1,1,1,0.5,1,1,1,1,1,1,1,1,0.25"}, "sd1")
    assert lbw(te) == 0.0 and lbw("unet.mid_block.resnets.0.conv1") == 0.5
    assert lbw("unet.up_blocks.3.attentions.2.proj_out") == 0.25  # OUT11


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"unet": {"sideways": 1}}, "unknown unet block key"),
        ({"unet": {"down": {"first": 1}}}, "block_0, block_1"),
        ({"lbw": [1] * 5}, "5 values, but sd1 block weights take 17 or 26"),
        ({"lbw": "1,x"}, "not a comma-separated list"),
        ({"unet": {"down": 1}, "lbw": [1] * 17}, "either per-block"),
        ({"text_encoder": "high"}, "not a number"),
        ({"unet": {"down": {"block_0": [1, "x"]}}}, "not a number"),
        (True, "not a number"),
    ],
)
def test_bad_scale_specs(spec, message):
    with pytest.raises(ScaleError, match=message):
        compile_scale(spec, "sd1")
