"""Hostile inputs to generate, reproduce, demo and train: refused with one line naming the input and the valid range,
before any model loads (outputs that cannot be written: test_output_paths.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from cli_helpers import run_cli
from generate_helpers import bomb_png, generate, one_line_error, tiny_png
from test_recipe_validation import TXT2IMG, png, unblocking

from lorastack.core.errors import GenerationError, ScaleError

# --- numbers --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--guidance", "nan"], ["guidance", "nan", "a finite number, at least 0 and at most 100"]),
        (["--guidance", "inf"], ["guidance", "inf", "a finite number, at least 0 and at most 100"]),
        (["--guidance", "1e9"], ["guidance", "a finite number, at least 0 and at most 100"]),
        (["--lora", "f.safetensors:nan"], ["f.safetensors:nan", "not a finite number", "-100 to 100"]),
        (["--lora", "f.safetensors:inf"], ["f.safetensors:inf", "not a finite number", "-100 to 100"]),
        (["--lora", "f.safetensors:-1e30"], ["f.safetensors:-1e30", "-100 to 100"]),
        (["--size", "0x0"], ["width", "0", "a positive multiple of 8, at most 8192"]),
        (["--size", "-64x64"], ["width", "-64", "a positive multiple of 8, at most 8192"]),
        (["--size", "64x-8"], ["height", "-8", "a positive multiple of 8, at most 8192"]),
        (["--size", "1000000x1000000"], ["width", "1000000", "a positive multiple of 8, at most 8192"]),
        (["--size", "8200"], ["width", "8200", "a positive multiple of 8, at most 8192"]),
        (["--steps", "1000000000"], ["steps", "1000000000", "at least 1 and at most 1000"]),
        (["--steps", "0"], ["steps", "at least 1 and at most 1000"]),
        (["--num-images", "1000000000"], ["num-images", "1000000000", "at least 1 and at most 100"]),
        (["--seed", "-1"], ["seed", "-1"]),
        (["--seed", str(10**30)], ["seed", str(10**30)[:10]]),
        (["--seed", str(2**63 - 1), "--num-images", "2"], ["seed"]),
        (["--strength", "nan"], ["strength", "nan", "(0, 1]"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0].startswith("--") else None,
)
def test_numbers_are_refused_before_any_model_loads(tmp_path, no_load, extra, needles):
    one_line_error(*generate(tmp_path, *extra)[::2], *needles)


@pytest.mark.parametrize(
    "prompt, needles",
    [
        ("a cat <lora:style:1e30>", ["<lora:style:1e30>", "-100 to 100"]),
        ("a cat <lora:style:0.5:unet=-1e9>", ["-1e9", "-100 to 100"]),
        ("a cat <lora:style:lbw=1,0,nan,1>", ["lbw", "not a finite number"]),
        ("a cat <lora:style:lbw=1,0,1e6,1>", ["lbw", "-100 to 100"]),
        ("x" * 10_000_000, ["prompt", "at most 10000 characters"]),
        ("<lora:" * 10_000 + "x" + ">" * 10_000, ["prompt"]),
        ("a " + "<lora:x:1>" * 999, ["'x' not loaded"]),  # one tag, repeated: refused for the unknown adapter
        (" ".join(f"<lora:a{i}:1>" for i in range(65)), ["65 adapters", "at most 64"]),
    ],
    ids=["scale", "unet", "lbw-nan", "lbw-huge", "10MB", "nested", "repeated", "65-tags"],
)
def test_prompt_tags_and_prompts_are_checked_before_any_model_loads(tmp_path, stop_at_load, prompt, needles):
    code, _, err = generate(tmp_path, prompt=prompt)
    if not needles:
        assert "stopped at load_base" in err, err
        return
    assert "stopped at load_base" not in err, err
    one_line_error(code, err, *needles)


def test_negative_prompt_and_lora_count_are_bounded(tmp_path, no_load):
    one_line_error(*generate(tmp_path, "--negative", "n" * 10_001)[::2], "negative", "at most 10000 characters")
    many = [arg for i in range(10_000) for arg in ("--lora", f"a{i}.safetensors")]
    code, _, err = generate(tmp_path, *many)
    one_line_error(code, err, "10000 adapters", "at most 64")


def test_init_images_and_masks_are_checked_before_any_model_loads(tmp_path, no_load):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    with unblocking(fifo):
        one_line_error(*generate(tmp_path, "--init-image", fifo)[::2], str(fifo), "FIFO")
    init = tiny_png(tmp_path / "init.png")
    with unblocking(fifo):
        one_line_error(*generate(tmp_path, "--init-image", init, "--mask", fifo)[::2], str(fifo), "FIFO")
    one_line_error(*generate(tmp_path, "--init-image", tmp_path)[::2], str(tmp_path), "folder")
    bomb = bomb_png(tmp_path / "bomb.png")
    one_line_error(*generate(tmp_path, "--init-image", bomb)[::2], str(bomb), "pixels")
    (tmp_path / "text.png").write_text("not an image")
    one_line_error(*generate(tmp_path, "--init-image", tmp_path / "text.png")[::2], "text.png", "not a readable image")
    small_mask = tiny_png(tmp_path / "mask.png", (32, 64))
    code, _, err = generate(tmp_path, "--init-image", init, "--mask", small_mask)
    one_line_error(code, err, "mask", "32x64", "64x64")


# --- the same checks for Python callers ---------------------------------------------------------------------------


class _Config(dict):
    __getattr__ = dict.get


class _FakePipe(SimpleNamespace):
    """Just the configs a pipeline's native size is read from (hashable: base_info looks pipelines up by identity)."""

    __hash__ = object.__hash__


FAKE_PIPE = _FakePipe(
    unet=SimpleNamespace(config=_Config(sample_size=8)),
    vae=SimpleNamespace(config=_Config(block_out_channels=[4, 8, 8, 8])),
    vae_scale_factor=8,
)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"steps": 10**9}, "steps"),
        ({"steps": True}, "steps"),
        ({"guidance": float("nan")}, "guidance"),
        ({"guidance": float("inf")}, "guidance"),
        ({"width": 0}, "width"),
        ({"height": -8}, "height"),
        ({"width": 10**6}, "width"),
        ({"seed": 10**30}, "seed"),
        ({"seed": -1}, "seed"),
        ({"num_images": 10**9}, "num-images"),
        ({"strength": float("nan")}, "strength"),
        ({"prompt": None}, "prompt"),
        ({"prompt": "x" * 10_001}, "prompt"),
        ({"negative_prompt": 5}, "negative"),
        ({"scheduler": None, "adapters": {"a": 1e30}}, "-100 to 100"),
        ({"adapters": {"a": float("nan")}}, "not a finite number"),
        ({"adapters": {"a": {"unet": 1e30}}}, "-100 to 100"),
        ({"adapters": {f"a{i}": 1.0 for i in range(65)}}, "at most 64"),
    ],
)
def test_python_callers_get_the_same_checks(kw, message):
    from lorastack.core.generate import GenerateOptions, _check

    with pytest.raises((GenerationError, ScaleError), match=message.replace("(", r"\(")):
        _check(GenerateOptions(**{"prompt": "a cat", **kw}), FAKE_PIPE)


def test_the_native_size_is_used_only_when_no_size_is_given():
    from lorastack.core.generate import GenerateOptions, _check

    assert _check(GenerateOptions(prompt="a cat"), FAKE_PIPE) == ("txt2img", 64, 64)
    assert _check(GenerateOptions(prompt="a cat", width=128), FAKE_PIPE) == ("txt2img", 128, 64)


# --- LORASTACK_HOME -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("under", [False, True], ids=["file", "under-a-file"])
def test_lorastack_home_that_is_not_a_folder(tmp_path, monkeypatch, data, no_load, under):
    afile = tmp_path / "home.txt"
    afile.write_text("x")
    home = afile / "sub" if under else afile
    monkeypatch.setenv("LORASTACK_HOME", str(home))
    commands = {
        "generate": ("generate", "a cat", "--base", tmp_path, "--lora", "me/style:0.5", "-o", tmp_path / "out"),
        "generate-files": ("generate", "a cat", "--base", tmp_path, "-o", tmp_path / "out"),
        "train": ("train", "--trainer", "lora", "--base", tmp_path, "--data", data, "--quiet"),
        "demo": ("demo", "--output", tmp_path / "demo", "--quiet"),
        "reproduce": ("reproduce", png(tmp_path / "image.png", json.dumps(TXT2IMG))),
        "list": ("list",),
    }
    for name, args in commands.items():
        code, _, err = run_cli(*args)
        assert code != 0, name
        one_line_error(code, err, "LORASTACK_HOME", str(afile), "not a folder")
    assert afile.read_text() == "x"


def test_a_sha256_cache_that_is_a_fifo_is_skipped(tmp_path, monkeypatch):
    from lorastack.adapters.files import file_sha256
    from lorastack.core.recipe import cached_sha256

    monkeypatch.setenv("LORASTACK_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "cache").mkdir(parents=True)
    store = tmp_path / "home" / "cache" / "sha256.json"
    os.mkfifo(store)
    target = tiny_png(tmp_path / "x.png")
    with unblocking(store):
        assert cached_sha256(target) == file_sha256(target)
    assert not store.is_file() and store.exists()  # left alone


def test_the_documented_limits_are_the_constants():
    from lorastack.core import generate

    doc = (Path(__file__).resolve().parents[1] / "docs" / "runtime.md").read_text()
    expected = {
        "MAX_STEPS": f"1 to {generate.MAX_STEPS}",
        "MAX_SIDE": f"8 to {generate.MAX_SIDE}",
        "MAX_NUM_IMAGES": f"1 to {generate.MAX_NUM_IMAGES}",
        "MAX_GUIDANCE": f"0 to {generate.MAX_GUIDANCE:g}",
        "MAX_SCALE": f"−{generate.MAX_SCALE:g} to {generate.MAX_SCALE:g}",
        "MAX_PROMPT_CHARS": f"at most {generate.MAX_PROMPT_CHARS:,}",
        "MAX_ADAPTERS": f"at most {generate.MAX_ADAPTERS}",
    }
    for name, text in expected.items():
        assert f"{text} (`{name}`)" in doc, (name, text)


# --- found by trying ----------------------------------------------------------------------------------------------


def test_a_prompt_that_is_not_utf8_is_refused_before_loading(no_load, tmp_path, lorastack_home):
    code, _, err = run_cli("generate", "a \udcff cat", "--base", str(tmp_path), "-o", str(tmp_path / "out"))
    one_line_error(code, err, "prompt", "not UTF-8")


def test_prompt_tags_are_found_before_loading(no_load, tmp_path, lorastack_home):
    code, _, err = run_cli("generate", "a cat <lora:nowhere:0.8>", "--base", str(tmp_path), "-o", str(tmp_path / "o"))
    one_line_error(code, err, "nowhere")


def test_inputs_that_are_not_files_are_named_for_what_they_are(no_load, tmp_path, lorastack_home):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    code, _, err = run_cli(
        "generate", "a cat", "--base", str(folder), "--lora", str(folder), "-o", str(tmp_path / "o")
    )
    one_line_error(code, err, "is a folder; --lora takes an adapter file or a registry reference")


def test_a_base_that_is_a_fifo(tmp_path, lorastack_home):
    from lorastack.core.base import load_base
    from lorastack.core.errors import BaseModelError

    fifo = tmp_path / "model"
    os.mkfifo(fifo)
    with pytest.raises(BaseModelError, match="is not a regular file or a folder"):
        load_base(fifo)


def test_a_config_file_that_is_a_fifo_or_not_utf8(tmp_path, monkeypatch, lorastack_home):
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    monkeypatch.setenv("LORASTACK_CONFIG", str(fifo))
    code, _, err = run_cli("generate", "a cat")
    one_line_error(code, err, "config.toml: the config file is not a regular file")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'default_base = "\xff"\n')
    monkeypatch.setenv("LORASTACK_CONFIG", str(latin))
    code, _, err = run_cli("generate", "a cat")
    one_line_error(code, err, "latin.toml: cannot read the config file")
