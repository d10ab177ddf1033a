"""Hostile inputs to generate, reproduce, demo and train: refused with one line naming the input and the valid range,
before any model loads; outputs that cannot be written refused before the work starts."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from cli_helpers import run_cli
from PIL import Image
from test_recipe_validation import TXT2IMG, png, unblocking

import lorastack.core.base
import lorastack.core.reproduce
from lorastack.core.errors import GenerationError, LorastackError, ScaleError


class Loaded(LorastackError):
    """Raised by the patched load_base: every check before the model load passed."""


def patch_load_base(monkeypatch, replacement) -> None:
    # the CLI, the demo and train import it when they run; reproduce.py holds its own reference
    for module in (lorastack.core.base, lorastack.core.reproduce):
        monkeypatch.setattr(module, "load_base", replacement)


@pytest.fixture
def no_load(monkeypatch):
    """load_base fails the test: the command must fail before any model loads."""

    def load_base(*args, **kwargs):
        raise AssertionError(f"load_base({args[0] if args else ''!s}) was called: the check came too late")

    patch_load_base(monkeypatch, load_base)


@pytest.fixture
def stop_at_load(monkeypatch):
    """load_base stops the command with a recognisable error: every earlier check passed."""

    def load_base(*args, **kwargs):
        raise Loaded("stopped at load_base")

    patch_load_base(monkeypatch, load_base)


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("Usage:", "Try "))]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def tiny_png(path: Path, size=(64, 64)) -> Path:
    Image.new("RGB", size, "white").save(path)
    return path


def bomb_png(path: Path, side: int = 100_000) -> Path:
    """A few bytes that claim ``side``×``side`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def generate(tmp_path, *extra, prompt="a cat"):
    return run_cli("generate", prompt, "--base", tmp_path / "base", "--steps", "2", "-o", tmp_path / "out", *extra)


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


# --- outputs --------------------------------------------------------------------------------------------------------


def test_generate_output_that_cannot_be_a_folder(tmp_path, no_load):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    for out in (afile, afile / "out", afile / "a" / "b"):
        code, _, err = run_cli("generate", "a cat", "--base", tmp_path, "-o", out)
        one_line_error(code, err, str(out), "not a folder")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_line_error(*run_cli("generate", "a cat", "--base", tmp_path, "-o", fifo)[::2], str(fifo), "FIFO")


def test_generate_makes_missing_output_folders(tmp_path, stop_at_load):
    code, _, err = run_cli("generate", "a cat", "--base", tmp_path, "-o", tmp_path / "new" / "deep" / "out")
    assert code == 1 and "stopped at load_base" in err, err  # every check passed; nothing made yet
    assert not (tmp_path / "new").exists()


@pytest.fixture
def recipe_png(tmp_path):
    return png(tmp_path / "image.png", json.dumps(TXT2IMG))


def test_reproduce_output_is_checked_before_the_work(tmp_path, recipe_png, no_load):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    existing = tiny_png(tmp_path / "existing.png")
    cases = [
        (tmp_path, "is a folder"),
        (fifo, "FIFO"),
        (tmp_path / "missing" / "x.png", "does not exist"),
        (existing, "--force"),
        (tmp_path / "image.png", "--force"),
    ]
    for output, needle in cases:
        code, _, err = run_cli("reproduce", recipe_png, "-o", output)
        one_line_error(code, err, str(output), needle)
    # the default output, beside the image, is not overwritten either
    tiny_png(tmp_path / "image-reproduced.png")
    one_line_error(*run_cli("reproduce", recipe_png)[::2], "image-reproduced.png", "--force")
    with unblocking(fifo):
        one_line_error(*run_cli("reproduce", fifo)[::2], str(fifo), "FIFO")


def test_reproduce_force_overwrites(tmp_path, recipe_png, stop_at_load):
    existing = tiny_png(tmp_path / "existing.png")
    code, _, err = run_cli("reproduce", recipe_png, "-o", existing, "--force")
    assert code == 1 and "stopped at load_base" in err, err


def test_demo_output_onto_a_file(tmp_path, no_load):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    for out in (afile, afile / "demo"):
        one_line_error(*run_cli("demo", "-o", out, "--steps", "1", "--quiet")[::2], str(out), "not a folder")
    (tmp_path / "demo" / "demo-grid.png").mkdir(parents=True)
    one_line_error(*run_cli("demo", "-o", tmp_path / "demo", "--quiet")[::2], "demo-grid.png", "folder")
    assert afile.read_text() == "x"


@pytest.fixture
def data(tmp_path):
    from lorastack import toy

    return toy.write_dataset(tmp_path / "data", 2)


def train(base, data, *extra):
    return run_cli("train", "--trainer", "lora", "--base", base, "--data", data, "--steps", "1", "--quiet", *extra)


def test_train_output_onto_a_file(tmp_path, data, no_load):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    for out in (afile, afile / "run"):
        one_line_error(*train(tmp_path, data, "--output", out)[::2], str(out), "not a folder")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_line_error(*train(tmp_path, data, "--output", fifo)[::2], str(fifo), "FIFO")
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "run.json")
    with unblocking(run / "run.json"):
        one_line_error(*train(tmp_path, data, "--output", run)[::2], "run.json")


READ_ONLY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[2])
    import lorastack.core.base, lorastack.core.reproduce
    from cli_helpers import run_cli

    def load_base(*args, **kwargs):
        print("load_base was called", file=sys.stderr)
        raise SystemExit(3)

    lorastack.core.base.load_base = lorastack.core.reproduce.load_base = load_base
    ro, image, data = sys.argv[1], sys.argv[3], sys.argv[4]
    results = {
        "generate": run_cli("generate", "a cat", "--base", ro, "-o", ro + "/out"),
        "generate-existing": run_cli("generate", "a cat", "--base", ro, "-o", ro),
        "reproduce": run_cli("reproduce", image, "-o", ro + "/x.png"),
        "demo": run_cli("demo", "-o", ro + "/demo", "--quiet"),
        "train": run_cli("train", "--trainer", "lora", "--base", ro, "--data", data, "--output", ro + "/run"),
    }
    print(json.dumps(results))
    """
)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) to mount a read-only folder")
def test_read_only_output_folders(tmp_path, recipe_png, data):
    """Root writes anywhere, so a read-only bind mount (in a private mount namespace) stands for a read-only folder."""
    ro = tmp_path / "ro"
    ro.mkdir()
    script = tmp_path / "script.py"
    script.write_text(READ_ONLY_SCRIPT)
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -rm does not work here: {probe.stderr.decode().strip()}")
    command = (
        f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && "
        f"{sys.executable} {script} {ro} {Path(__file__).parent} {recipe_png} {data}"
    )
    done = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.splitlines()[-1])
    for name, (code, _, err) in results.items():
        assert "load_base was called" not in err, name
        one_line_error(code, err, str(ro), "cannot write")


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
