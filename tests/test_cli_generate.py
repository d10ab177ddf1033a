"""``lorastack generate`` and ``lorastack reproduce`` as a user runs them."""

import json

import pytest
from adapter_cases import make_case
from cli_helpers import run_cli
from PIL import Image

from lorastack.core.recipe import read_recipe
from lorastack.testing.models import load_pipeline


@pytest.fixture
def files(tiny_sd1_dir, tmp_path):
    pipe = load_pipeline(tiny_sd1_dir)
    return {
        "base": tiny_sd1_dir,
        "style": make_case(pipe, "peft", tmp_path / "style.safetensors", seed=1),
        "subject": make_case(pipe, "kohya", tmp_path / "subject.safetensors", seed=2),
        "out": tmp_path / "out",
    }


def test_generate_then_reproduce(files):
    code, out, err = run_cli(
        "generate", "a red cat <lora:subject:0.5>", "--base", files["base"], "--lora", f"{files['style']}:0.8",
        "--lora", files["subject"], "--seed", "11", "--steps", "3", "--num-images", "2", "-o", files["out"],
    )  # fmt: skip
    assert code == 0, err
    paths = [line.split()[0] for line in out.splitlines()]
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["00000-11.png", "00001-12.png"]
    recipe = read_recipe(paths[1])
    assert recipe["prompt"] == "a red cat" and recipe["seed"] == 12
    assert {a["name"]: a["scale"] for a in recipe["adapters"]} == {"style": 0.8, "subject": 0.5}
    code, out, err = run_cli("reproduce", paths[1], "--check")
    assert code == 0 and out.strip().endswith(": identical"), err


def test_compare_grid_from_the_cli(files):
    code, out, err = run_cli(
        "generate", "a red cat", "--base", files["base"], "--lora", f"{files['style']}:0.8",
        "--lora", f"{files['subject']}:0.5", "--seed", "3", "--steps", "2", "--compare", "-o", files["out"],
    )  # fmt: skip
    assert code == 0, err
    assert "columns: base, style, subject, all" in out
    grid = Image.open(out.split()[0])
    # 64 px tiles enlarged 4x (nearest) for display, under a caption and column labels, beside row labels
    assert grid.width > 4 * 256 and 256 + 2 * 14 < grid.height < 256 + 200


def test_scheduler_size_and_never_overwriting(files):
    args = ["generate", "a cat", "--base", files["base"], "--seed", "1", "--steps", "2", "-o", files["out"]]
    assert run_cli(*args, "--size", "64x72", "--scheduler", "euler")[0] == 0
    assert run_cli(*args)[0] == 0
    names = sorted(p.name for p in files["out"].iterdir())
    assert names == ["00000-1.png", "00001-1.png"]
    assert Image.open(files["out"] / names[0]).size == (64, 72)
    assert read_recipe(files["out"] / names[0])["scheduler"] == "euler"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--size", "65x64"], "width must be a positive multiple of 8"),
        (["--size", "big"], "give WIDTHxHEIGHT"),
        (["--scheduler", "turbo"], "'turbo' is not one of"),
        (["--lora", "missing.safetensors"], "missing.safetensors: no such file"),
        (["--mask", "m.png"], "no such file"),
        (["--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_bad_options_give_one_line_errors(files, extra, message):
    code, _, err = run_cli("generate", "a cat", "--base", files["base"], "--steps", "1", *extra, "-o", files["out"])
    assert code != 0 and message in err and "Traceback" not in err, err
    assert not files["out"].exists()


def test_unknown_tag_names_the_loaded_adapters(files):
    code, _, err = run_cli(
        "generate", "a cat <lora:ghost:0.5>", "--base", files["base"], "--lora", files["style"], "-o", files["out"]
    )
    assert code == 1 and "'ghost' not loaded; loaded adapters: style" in err


def test_bad_tag_scale_and_missing_base(files, monkeypatch):
    code, _, err = run_cli("generate", "a cat <lora:style:loud>", "--base", files["base"], "-o", files["out"])
    assert code != 0 and "'loud' is not a number" in err
    code, _, err = run_cli("generate", "a cat", "-o", files["out"])
    assert code == 2 and "give --base" in err


def test_reproduce_errors(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    code, _, err = run_cli("reproduce", tmp_path / "plain.png")
    assert code == 1 and "has no lorastack recipe" in err


def test_registry_references_and_trigger_words_agree(files, lorastack_home):
    """`import --trigger` words are what `generate --trigger` adds; `me/style:v1` is one name in --lora and in a
    prompt tag, recorded as written."""
    code, _, err = run_cli("import", files["style"], "--name", "me/style:v1", "--trigger", "zzstyle")
    assert code == 0, err
    code, out, err = run_cli(
        "generate", "a red cat <lora:me/style:v1:0.5>", "--base", files["base"], "--lora", "me/style:v1:0.8",
        "--trigger", "--seed", "4", "--steps", "1", "-o", files["out"], "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)  # stdout holds one JSON object and nothing else
    recipe = read_recipe(result["images"][0]["path"])
    assert recipe["prompt"] == "a red cat, zzstyle"
    assert [(a["name"], a["source"], a["scale"]) for a in recipe["adapters"]] == [("me/style:v1", "me/style@1", 0.5)]
    assert result["images"][0]["seed"] == 4 and result["adapters"] == {"me/style:v1": "me/style@1"}
    # only in a tag: found in the registry by that name too
    code, out, err = run_cli(
        "generate", "a cat <lora:me/style:v1:0.3>", "--base", files["base"], "--steps", "1", "-o", files["out"]
    )
    assert code == 0, err
    assert read_recipe(out.split()[0])["adapters"][0]["name"] == "me/style:v1"


def test_toy_base_defaults_and_the_builtin_style(tmp_path, lorastack_home):
    """On the toy base: 64 px and its own guidance by default, `--lora toy-style` by name, reproducible."""
    code, out, err = run_cli(
        "generate", "a red circle on a white background", "--base", "toy", "--lora", "toy-style:0.7", "--seed", "2",
        "--steps", "2", "-o", tmp_path / "out", "--json",
    )  # fmt: skip
    assert code == 0, err
    path = json.loads(out)["images"][0]["path"]
    assert Image.open(path).size == (64, 64)
    recipe = read_recipe(path)
    assert recipe["guidance"] == 1.5 and recipe["adapters"][0]["source"] == "toy-style"
    code, out, err = run_cli("reproduce", path, "--check", "--json")
    assert code == 0, err
    assert json.loads(out)["identical"] is True


def test_default_device_is_the_best_one_present(files, monkeypatch):
    import lorastack.core.devices

    monkeypatch.setattr(lorastack.core.devices, "best_device", lambda: "mps")  # what a Mac would pick
    code, _, err = run_cli("generate", "a cat", "--base", files["base"], "--steps", "1", "-o", files["out"])
    assert code == 1 and "device 'mps'" in err  # asked for (by default), refused as absent here
