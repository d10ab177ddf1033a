"""A1111 infotext: what lorastack writes parses back the way A1111's own parser reads it (the grammar of
modules/infotext_utils.py: prompt lines, ``Negative prompt:``, one settings line of ``Key: value`` pairs)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorastack.core.errors import RecipeError
from lorastack.core.infotext import (
    MAX_INFOTEXT_CHARS,
    alias,
    parse_infotext,
    parse_lora_hashes,
    quote,
    scheduler_for,
    write_infotext,
)

TENSOR = "0123456789abcdef" * 4


def recipe(**kw):
    base = {"source": "/models/dream, v2.safetensors", "location": "/models/x", "digest": "sha256:" + "ab" * 32}
    return {
        "prompt": "a red cat, studio light",
        "negative_prompt": "blurry, lowres",
        "seed": 42,
        "steps": 20,
        "guidance": 7.5,
        "width": 512,
        "height": 768,
        "scheduler": "euler_a",
        "strength": None,
        "base": base,
        "adapters": [
            {"name": "me/style:v1", "tensor_sha256": TENSOR, "scale": 0.8},
            {"name": "subject", "tensor_sha256": "f" * 64, "scale": {"text_encoder": 0.5, "unet": 1.0}},
        ],
        **kw,
    }


def test_written_infotext_parses_back_as_a1111_reads_it():
    text = write_infotext(recipe(), "abababab12")
    fields = parse_infotext(text)
    assert fields["Prompt"] == "a red cat, studio light <lora:me/stylev1:0.8> <lora:subject:0.5:1>"
    assert fields["Negative prompt"] == "blurry, lowres"
    assert fields["Steps"] == "20" and fields["Sampler"] == "Euler a" and fields["CFG scale"] == "7.5"
    assert fields["Seed"] == "42" and (fields["Size-1"], fields["Size-2"]) == ("512", "768")
    assert fields["Model hash"] == "abababab12"
    assert fields["Model"] == "dream, v2"  # a comma in a value: quoted, and unquoted when read
    hashes = parse_lora_hashes(fields["Lora hashes"])
    assert hashes == {"me/stylev1": TENSOR[:12], "subject": "f" * 12}
    # every tag's alias has its hash: the tag and the hash pair up again
    tagged = re.findall(r"<lora:([^:>]+):", fields["Prompt"])
    assert set(tagged) == set(hashes)
    assert scheduler_for(fields["Sampler"]) == "euler_a"


def test_settings_line_format_is_a1111s():
    text = write_infotext(recipe(adapters=[]), "abababab12")
    prompt, negative, last = text.split("\n")
    assert negative == "Negative prompt: blurry, lowres"
    assert last.startswith("Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 512x768, Model hash: ")
    assert 'Model: "dream, v2"' in last and "Lora hashes" not in last and "<lora:" not in prompt


def test_a1111_text_from_another_tool():
    text = (
        "masterpiece, 1girl <lora:add_detail:0.6>, <lora:Pony Style v2:1>\n"
        "second prompt line\n"
        "Negative prompt: bad hands,\nworst quality\n"
        "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, Seed: 123456789, Size: 832x1216, "
        'Model hash: 67ab2fd8ec, Model: ponyDiffusionV6XL, Lora hashes: "add_detail: 7c6bad76eb54, Pony Style v2: '
        'e3b0c44298fc", TI hashes: "x: 1", Version: v1.9.4'
    )
    fields = parse_infotext(text)
    assert fields["Prompt"].endswith("second prompt line") and fields["Negative prompt"] == "bad hands,\nworst quality"
    assert scheduler_for(fields["Sampler"], fields.get("Schedule type")) == "dpm++2m_karras"
    assert parse_lora_hashes(fields["Lora hashes"]) == {"add_detail": "7c6bad76eb54", "Pony Style v2": "e3b0c44298fc"}
    assert fields["Version"] == "v1.9.4"


def test_few_pairs_means_prompt_only():
    fields = parse_infotext("a cat: sitting, Steps: 3")
    assert fields == {"Prompt": "a cat: sitting, Steps: 3", "Negative prompt": ""}


def test_bounds_and_types():
    with pytest.raises(RecipeError, match="at most"):
        parse_infotext("x" * (MAX_INFOTEXT_CHARS + 1), "big.png")
    with pytest.raises(RecipeError, match="not text"):
        parse_infotext(b"Steps: 1", "bytes.png")
    assert parse_lora_hashes("no hash here, a: xyz, b: 0123456789") == {"b": "0123456789"}


def test_quote_and_alias():
    assert quote("plain") == "plain" and quote("a, b") == '"a, b"' and quote('say "x": y') == json.dumps('say "x": y')
    assert alias("me/style:v1") == "me/stylev1" and alias("a,<b>") == "ab" and alias(":") == "adapter"


@settings(max_examples=60, deadline=None)
@given(
    prompt=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=60).filter(
        lambda p: p.strip() == p and not p.startswith("Negative prompt:")
    ),
    model=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30),
)
def test_any_prompt_and_model_name_round_trip(prompt, model):
    text = write_infotext(
        recipe(
            prompt=prompt,
            negative_prompt="",
            adapters=[],
            base={"source": f"/m/{model.replace('/', '_')}.safetensors", "location": "/m", "digest": "sha256:00"},
        ),
        "0000000000",
    )
    fields = parse_infotext(text)
    assert fields["Prompt"] == prompt and fields["Seed"] == "42" and fields["Steps"] == "20"
