"""Option values a user may type or a recipe may hold: typed, bounded, refused before any work in one line."""

from __future__ import annotations

import json
import math
import re

import pytest

from lorastack.core.interfaces import Option, PluginOptionError
from lorastack.core.training.options import ENGINE_OPTIONS, TrainingError, load_recipe, resolve
from lorastack.plugins.manager import get_trainer
from tests.cli_helpers import run_cli

TRAINERS = ("lora", "dreambooth", "pivotal")
HUGE = "9" * 5000  # Python's int() refuses strings of over 4,300 digits


def options_of(trainer: str):
    return get_trainer(trainer).options


def refused(trainer: str, given: dict) -> str:
    with pytest.raises(PluginOptionError) as raised:
        resolve(options_of(trainer), {"device": "cpu", **given}, trainer)
    message = str(raised.value)
    assert "\n" not in message and len(message) < 200, message
    return message


# --- Option itself --------------------------------------------------------------------------------------------------


def test_maximum_and_exclusive_maximum():
    rank = Option("rank", "int", 4, minimum=1, maximum=1024)
    assert rank.parse("1024") == 1024 and rank.parse(1) == 1
    with pytest.raises(PluginOptionError, match=r"^--rank '100000' must be in 1–1024$"):
        rank.parse("100000")
    with pytest.raises(PluginOptionError, match=r"^--rank 0 must be ≥ 1 \(the range is 1–1024\)$"):
        rank.parse(0)
    dropout = Option("caption_dropout", "float", 0.0, minimum=0, maximum=1, exclusive_maximum=True)
    assert dropout.parse("0.999") == 0.999
    with pytest.raises(PluginOptionError, match=r"^--caption-dropout 1\.0 must be in \[0, 1\)$"):
        dropout.parse(1.0)
    lr = Option("learning_rate", "float", 1e-4, minimum=0, exclusive_minimum=True, maximum=1)
    with pytest.raises(PluginOptionError, match=r"^--learning-rate 2 must be in \(0, 1\]$"):
        lr.parse(2)
    capped = Option("x", "float", maximum=10)
    assert capped.parse(-5) == -5.0
    with pytest.raises(PluginOptionError, match=r"^--x 11 must be ≤ 10$"):
        capped.parse(11)


def test_describe_lists_the_bounds():
    option = Option("p", "float", 0.0, "Dropout.", minimum=0, maximum=1, exclusive_maximum=True)
    assert option.describe() == {"name": "p", "type": "float", "help": "Dropout.", "default": 0.0, "minimum": 0,
                                 "maximum": 1, "exclusive_maximum": True}  # fmt: skip
    assert "exclusive_minimum" in Option("q", "float", minimum=0, exclusive_minimum=True).describe()


def test_bounds_must_make_sense():
    with pytest.raises(ValueError, match="maximum"):
        Option("x", "int", minimum=5, maximum=1)


@pytest.mark.parametrize("kind", ["int", "float"])
@pytest.mark.parametrize("value", [True, False])
def test_bools_are_not_numbers(kind, value):
    with pytest.raises(PluginOptionError, match=rf"--x {str(value).lower()} is not an? (integer|number)"):
        Option("x", kind).parse(value)


@pytest.mark.parametrize("kind", ["int", "float"])
@pytest.mark.parametrize(
    "value",
    [HUGE, int(HUGE[:4000]), 10**400, "1e999", float("nan"), "-inf", [1], {"a": 1}],
    ids=["5000-digit-text", "4000-digit-int", "10**400", "1e999", "nan", "-inf", "list", "dict"],
)
def test_absurd_numbers_are_refused_with_a_short_message(kind, value):
    with pytest.raises(PluginOptionError) as raised:
        Option("steps", kind, minimum=1, maximum=10_000_000).parse(value)
    message = str(raised.value)
    assert message.startswith("--steps ") and len(message) < 120 and "\n" not in message, message


def test_the_echoed_value_is_cut_and_says_how_long_it_was():
    with pytest.raises(PluginOptionError) as raised:
        Option("steps", "int", minimum=1).parse(HUGE)
    message = str(raised.value)
    assert "9999…" in message and "5,000 characters" in message and "is not an integer" in message
    with pytest.raises(PluginOptionError) as raised:
        Option("steps", "int", minimum=1, maximum=10).parse(int(HUGE[:4000]))
    assert "a 4,000-digit integer must be in 1–10" in str(raised.value)


@pytest.mark.parametrize("value", [["a"], {"a": 1}, True, "bad\udcfftext"])
def test_text_options_take_text(value):
    with pytest.raises(PluginOptionError, match="--caption-prefix .* is not text"):
        Option("caption_prefix", "str").parse(value)
    assert Option("caption_prefix", "str").parse(5) == "5"


# --- the engine's and the built-in trainers' options -----------------------------------------------------------------


UNBOUNDED_FLOATS = {"max_grad_norm"}  # any finite clipping norm is valid; a large one only stops clipping


@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_number_option_has_a_maximum(trainer):
    for option in (*options_of(trainer), *ENGINE_OPTIONS):
        if option.type == "int" or (option.type == "float" and option.name not in UNBOUNDED_FLOATS):
            assert option.maximum is not None, f"{trainer}: --{option.flag} has no maximum"


@pytest.mark.parametrize(
    "given, message",
    [
        ({"rank": 100000}, "--rank 100000 must be in 1–1024"),
        ({"rank": "100000"}, "--rank '100000' must be in 1–1024"),
        ({"rank": 1e23}, "--rank 1e+23 must be in 1–1024"),
        ({"rank": 10**23}, "--rank 100000000000000000000000 must be in 1–1024"),
        ({"rank": True}, "--rank true is not an integer"),
        ({"steps": True}, "--steps true is not an integer"),
        ({"steps": 10**30}, "must be in 1–10000000"),
        pytest.param({"steps": HUGE}, "is not an integer", id="steps-5000-digits"),
        ({"resolution": 10**9}, "--resolution 1000000000 must be in 8–4096"),
        ({"batch_size": 10**9}, "--batch-size 1000000000 must be in 1–1024"),
        ({"gradient_accumulation": 10**6}, "must be in 1–1024"),
        ({"repeats": 10**9}, "--repeats 1000000000 must be in 1–1000"),
        ({"keep_tokens": 10**9}, "--keep-tokens 1000000000 must be in 0–1000"),
        ({"checkpoint_every": 10**12}, "--checkpoint-every 1000000000000 must be in 0–10000000"),
        ({"validate_every": 10**12}, "must be in 0–10000000"),
        ({"warmup_steps": 10**12}, "must be in 0–10000000"),
        ({"validation_images": 10**9}, "--validation-images 1000000000 must be in 0–10000"),
        ({"sample_steps": 10**6}, "--sample-steps 1000000 must be in 1–1000"),
        ({"learning_rate": 5}, "--learning-rate 5 must be in (0, 1]"),
        ({"learning_rate": True}, "--learning-rate true is not a number"),
        ({"learning_rate": 10**400}, "--learning-rate a 401-digit integer is not a number"),
        ({"text_encoder_lr": 2.0}, "--text-encoder-lr 2.0 must be in 0–1"),
        ({"caption_dropout": 1.0}, "--caption-dropout 1.0 must be in [0, 1)"),
        ({"caption_dropout": 1.5}, "--caption-dropout 1.5 must be in [0, 1)"),
        ({"noise_offset": 5}, "--noise-offset 5 must be in 0–1"),
        ({"weight_decay": 100}, "--weight-decay 100 must be in 0–1"),
        ({"min_snr_gamma": 1e9}, "--min-snr-gamma 1000000000.0 must be in 0–1000"),
        ({"alpha": 1e30}, "--alpha 1e+30 must be in (0, 4096]"),
        ({"seed": 2**32}, "--seed 4294967296 must be in 0–4294967295"),
        ({"seed": -1}, "--seed -1 must be ≥ 0 (the range is 0–4294967295)"),
        ({"validation_prompts": "|".join(["a cat"] * 33)}, "--validation-prompts has 33 prompts; the most is 32"),
        ({"batch_size": 1024, "resolution": 1024}, "--batch-size 1024 at --resolution 1024 is 1,073,741,824 pixels"),
        ({"device": "banana"}, "--device 'banana' is not a device"),
    ],
)  # fmt: skip
def test_out_of_range_values_are_refused_naming_the_range(given, message):
    assert message in refused("lora", given)


@pytest.mark.parametrize(
    "trainer, given, message",
    [
        ("dreambooth", {"token": "tok", "class_images": 10**9}, "--class-images 1000000000 must be in 1–10000"),
        ("dreambooth", {"token": "tok", "prior_loss_weight": 1e9}, "--prior-loss-weight 1000000000.0 must be in 0–"),
        ("pivotal", {"token": "tok", "vectors": 10**6}, "--vectors 1000000 must be in 1–64"),
        ("pivotal", {"token": "tok", "ti_steps": 10**30}, "must be in 0–10000000"),
        ("pivotal", {"token": "tok", "ti_learning_rate": 5}, "--ti-learning-rate 5 must be in (0, 1]"),
    ],
)  # fmt: skip
def test_trainer_options_are_bounded(trainer, given, message):
    assert message in refused(trainer, given)


def test_the_largest_valid_values_are_accepted():
    big = {"rank": 1024, "alpha": 4096, "steps": 10_000_000, "batch_size": 1024, "resolution": 512,
           "gradient_accumulation": 1024, "repeats": 1000, "keep_tokens": 1000, "checkpoint_every": 10_000_000,
           "validate_every": 10_000_000, "warmup_steps": 10_000_000, "validation_images": 10_000, "sample_steps": 1000,
           "learning_rate": 1, "text_encoder_lr": 1, "caption_dropout": 0.999, "noise_offset": 1, "weight_decay": 1,
           "min_snr_gamma": 1000, "seed": 2**32 - 1, "validation_prompts": "|".join(["a"] * 32)}  # fmt: skip
    resolved = resolve(options_of("lora"), {"device": "cpu", **big}, "lora")
    assert {k: resolved[k] for k in big} == big
    assert resolve(options_of("lora"), {"device": "cpu", "resolution": 4096, "batch_size": 16}, "lora")
    assert resolve(options_of("lora"), {"device": "cuda:1"}, "lora")["device"] == "cuda:1"


# --- the command line and recipes -----------------------------------------------------------------------------------


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail loudly if a bad option gets as far as reading the dataset or loading a model."""

    def loaded(*args, **kwargs):
        raise AssertionError("got past the option check: the dataset was opened or a model loaded")

    monkeypatch.setattr("lorastack.core.data.open_dataset", loaded)
    monkeypatch.setattr("lorastack.core.base.load_base", loaded)


@pytest.fixture
def data(tmp_path):
    from PIL import Image

    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (16, 16), "red").save(folder / "a.png")
    return folder


def one_error_line(code: int, out: str, err: str) -> str:
    assert code != 0 and "Traceback" not in err, (code, err)
    lines = [line for line in err.strip().splitlines() if line.startswith("Error: ")]
    # a usage error (exit 2) may come with click's usage lines; the error itself is one line
    assert len(lines) == 1 and len(lines[0]) < 200 and (code == 2 or len(err.strip().splitlines()) == 1), err
    return lines[0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--rank", "100000"], "'--rank': 100000 is not in the range 1<=x<=1024"),
        (["--resolution", str(10**9)], "'--resolution': 1000000000 is not in the range 8<=x<=4096"),
        pytest.param(["--steps", HUGE], "is not an integer", id="steps-5000-digits"),
        (["--learning-rate", "1e999"], "'--learning-rate': '1e999' is not a finite number"),
    ],
)
def test_the_cli_refuses_bad_values_before_any_work(flags, message, data, nothing_loads):
    line = one_error_line(*run_cli("train", "lora", "--base", "toy", "--data", data, *flags, "--quiet"))
    assert message in line


@pytest.mark.parametrize(
    "recipe, message",
    [
        ("[training]\nsteps = true\n", "'--steps': true is not an integer"),
        ("rank = 1e23\n", "'--rank': 1e+23 must be in 1–1024"),
        pytest.param(
            f"rank = {HUGE}\n", "recipe.toml' cannot be read: Exceeds the limit (4300 digits)", id="rank-5000-digits"
        ),
        pytest.param(
            f"learning_rate = 1{'0' * 400}\n",
            "'--learning-rate': a 401-digit integer is not a number",
            id="learning-rate-401-digits",
        ),
        ("caption_prefix = [1, 2]\n", "'--caption-prefix': [1, 2] is not text"),
        ("trainer = 5\n", "trainer must be text, not 5"),
    ],
)
def test_bad_recipes_are_refused_before_any_work(recipe, message, data, tmp_path, nothing_loads):
    path = tmp_path / "recipe.toml"
    head = f'base = "toy"\ndata = "{data}"\n' + ('trainer = "lora"\n' if "trainer =" not in recipe else "")
    path.write_text(head + recipe)
    line = one_error_line(*run_cli("train", "--recipe", path, "--quiet"))
    assert message in line, line


def test_a_recipe_is_read_at_most_a_megabyte(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text("# " + "x" * 2**20 + "\n")
    with pytest.raises(TrainingError, match=re.escape("is over the 1 MiB limit of a recipe")):
        load_recipe(path)


def test_help_and_plugins_json_show_the_ranges():
    code, out, _ = run_cli("train", "lora", "--help")
    assert code == 0
    help_text = " ".join(out.split())  # click wraps the help column
    assert "--rank INT LoRA rank. [default: 4; 1<=x<=1024]" in help_text, help_text
    assert "Probability a caption is dropped (trains unconditional too). [default: 0.0; 0<=x<1]" in help_text
    code, out, _ = run_cli("plugins", "--json")
    assert code == 0

    def options(node):
        if isinstance(node, dict):
            if "name" in node and "type" in node:
                yield node
            for value in node.values():
                yield from options(value)
        elif isinstance(node, list):
            for value in node:
                yield from options(value)

    described = {o["name"]: o for o in options(json.loads(out))}
    assert described["vectors"]["maximum"] == 64 and described["class_images"]["maximum"] == 10_000
    assert described["ti_learning_rate"] == {**described["ti_learning_rate"], "minimum": 0, "exclusive_minimum": True,
                                             "maximum": 1}  # fmt: skip


def test_docs_list_every_bounded_engine_option():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "training.md").read_text()
    for option in ENGINE_OPTIONS:
        if option.maximum is not None:
            assert f"`--{option.flag}`" in doc, option.flag
    assert "1–1024" in doc and "8–4096" in doc


def test_nan_and_infinity_stay_refused():
    option = Option("lr", "float", minimum=0, maximum=1)
    for value in (math.nan, math.inf, "nan", "inf", "-inf"):
        with pytest.raises(PluginOptionError, match="is not a number"):
            option.parse(value)
