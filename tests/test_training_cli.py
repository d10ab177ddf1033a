"""``lorastack train TRAINER``: click options from the declared ones, recipes as defaults, --json, the base's own
resolution, progress off a terminal, and the typed options the engine and trainers read."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import run_cli
from PIL import Image

from lorastack.core.training.options import ENGINE_OPTIONS, resolve

FAST = ("--steps", "2", "--sample-steps", "2", "--device", "cpu")


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i, colour in enumerate(("red", "blue", "green")):
        Image.new("RGB", (40, 40), colour).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a {colour} square")
    return folder


def _cli(*args, home: Path) -> subprocess.CompletedProcess:
    """The real command in a child process, its stdout and stderr pipes (not a terminal)."""
    env = {**os.environ, "LORASTACK_HOME": str(home), "LORASTACK_RAISE_ERRORS": ""}
    return subprocess.run([sys.executable, "-m", "lorastack.cli.main", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


# --- the command line -----------------------------------------------------------------------------------------


def test_train_help_lists_every_registered_trainer_and_h_works():
    for flag in ("--help", "-h"):
        code, out, err = run_cli("train", flag)
        assert code == 0, err
        commands = out.split("Commands:")[1]
        for trainer in ("lora", "dreambooth", "pivotal"):
            assert re.search(rf"^\s+{trainer}\s+\S", commands, re.M), out


def test_a_trainers_help_shows_click_types_ranges_choices_and_flags():
    code, out, err = run_cli("train", "dreambooth", "-h")
    assert code == 0, err
    text = " ".join(out.split())
    assert "--token STR The rare token" in text and "[required]" in text
    assert "--class-name, --class STR" in text
    assert "--steps INT Optimizer steps to train. [default: 500; 1<=x<=10000000]" in text
    assert "--targets [attention|attention-ff|all]" in text
    assert "--random-flip / --no-random-flip" in text
    assert "-o, --output FOLDER Output folder" in text and "--json" in text and "--recipe FILE" in text


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--trigger"], "Option '--trigger' requires an argument"),  # never the trigger word "true"
        (["--rank", "0"], "'--rank': 0 is not in the range 1<=x<=1024"),
        (["--targets", "everything"], "'everything' is not one of 'attention', 'attention-ff', 'all'"),
        (["--random-flip", "true"], "Got unexpected extra argument (true)"),  # a flag takes no value
        (["--no-such-option", "1"], "No such option '--no-such-option'"),
    ],
)
def test_bad_flags_are_usage_errors_before_any_work(flags, message, data, lorastack_home):
    code, out, err = run_cli("train", "lora", "--base", "toy", "--data", data, *flags)
    assert code == 2 and out == "" and message in err, err
    assert not (lorastack_home / "runs").exists()


def test_an_unknown_trainer_names_the_known_ones():
    code, _, err = run_cli("train", "lorra", "--base", "toy")
    assert code == 2 and "no trainer 'lorra'; trainers: dreambooth, lora, pivotal" in err


def test_flags_become_typed_options_and_only_given_ones_reach_the_core(data, monkeypatch, tmp_path):
    seen = {}

    def fake_train(trainer, base, data, **kwargs):
        seen.update(trainer=trainer, base=base, **kwargs)
        raise SystemExit(0)

    monkeypatch.setattr("lorastack.core.training.api.train", fake_train)
    code, _, err = run_cli(
        "train",
        "dreambooth",
        "--base",
        "toy",
        "--data",
        data,
        "--token",
        "aawxbc",
        "--class",
        "figurine",
        "--random-flip",
        "--no-center-crop",
        "--rank",
        "8",
        "-o",
        tmp_path / "run",
    )
    assert code == 0, err
    assert seen["options"] == {"token": "aawxbc", "class_name": "figurine", "random_flip": True,
                               "center_crop": False, "rank": 8}  # fmt: skip
    assert seen["output"] == tmp_path / "run" and seen["trainer"] == "dreambooth"


def test_a_recipe_feeds_the_defaults_and_flags_override_it(data, monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr("lorastack.core.training.api.train",
                        lambda *args, **kwargs: (seen.update(args=args, **kwargs), sys.exit(0)))  # fmt: skip
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'trainer = "lora"\nbase = "toy"\ndata = "{data}"\n[training]\nrank = 16\nsteps = 9\n'
                      'random-flip = true\ntrigger = "zq"\n')  # fmt: skip
    code, _, err = run_cli("train", "lora", "--recipe", recipe, "--steps", "3")
    assert code == 0, err
    assert seen["args"] == ("lora", "toy", str(data))
    assert seen["options"] == {"rank": 16, "steps": 3, "random_flip": True, "trigger": "zq"}
    # the older spelling reaches the same command
    code, _, err = run_cli("train", "--trainer", "lora", "--config", recipe)
    assert code == 0 and seen["options"]["steps"] == 9, err
    recipe.write_text('trainer = "lora"\nbase = "toy"\nbogus = 1\n')
    code, _, err = run_cli("train", "lora", "--recipe", recipe)
    assert code == 1 and "trainer 'lora' has no option 'bogus'" in err
    code, _, err = run_cli("train", "dreambooth", "--recipe", recipe)
    assert code == 1 and "is for trainer 'lora', not 'dreambooth'" in err


# --- runs -------------------------------------------------------------------------------------------------------


def test_json_is_the_one_object_on_stdout_and_the_toy_trains_at_its_own_resolution(data, tmp_path, lorastack_home):
    code, out, err = run_cli("train", "lora", "--base", "toy", "--data", data, "-o", tmp_path / "run", "--json",
                             "--quiet", "--name", "me/squares", *FAST)  # fmt: skip
    assert code == 0, err
    result = json.loads(out)  # nothing else on stdout
    assert result["adapter_path"] == str(tmp_path / "run" / "adapter.safetensors")
    assert result["ref"] == "me/squares@1" and result["steps"] == 2 and result["seconds"] > 0
    losses = json.loads((tmp_path / "run" / "losses.json").read_text())
    assert result["loss_final"] == pytest.approx(losses[-1], abs=1e-6)  # a tenth of 2 steps: the last one
    assert "resolution = 64\n" in (tmp_path / "run" / "recipe.toml").read_text()  # the toy's 64 px, not 512
    assert "Warning" not in err


def test_piped_training_prints_progress_lines_and_a_far_resolution_warns(data, tmp_path):
    run = _cli("train", "lora", "--base", "toy", "--data", data, "-o", tmp_path / "run", "--resolution", "16",
               "--steps", "3", "--device", "cpu", home=tmp_path / "home")  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert [line for line in lines if "resolution 16" in line] == [
        "Warning: resolution 16 is 0.25x the base's 64 px (from its model config); results and speed suffer far "
        "from it"
    ]
    progress = [line for line in lines if line.startswith("step ")]
    assert progress and all(re.fullmatch(r"step \d/3 loss \d+\.\d{4} it/s \d+\.\d\d", line) for line in progress)
    assert progress[-1].startswith("step 3/3"), lines
    assert "mean loss" in run.stdout and "over the first tenth" in run.stdout
    quiet = _cli("train", "lora", "--base", "toy", "--data", data, "-o", tmp_path / "quiet", "--steps", "1",
                 "--device", "cpu", "--quiet", home=tmp_path / "home")  # fmt: skip
    assert quiet.returncode == 0 and not [line for line in quiet.stderr.splitlines() if line.startswith("step ")]


def test_dreambooth_says_it_generates_class_images(data, tmp_path, lorastack_home, capsys):
    from lorastack.core.training.api import train

    train("dreambooth", "toy", data, output=tmp_path / "run", options={
        "token": "aawxbc", "class_name": "square", "class_images": 2, "steps": 1, "sample_steps": 1, "device": "cpu",
    })  # fmt: skip
    err = capsys.readouterr().err
    assert "generating 2 class images ('a photo of square') with the base" in err
    assert "class image 2/2" in err


# --- typed options ----------------------------------------------------------------------------------------------


def test_resolved_options_are_a_frozen_typed_object_with_mapping_reads():
    from lorastack.plugins.trainers import LoraTrainer

    options = resolve(LoraTrainer.options, {"rank": "8", "device": "cpu"}, "lora", base_resolution=64)
    assert dataclasses.is_dataclass(options) and type(options).__name__ == "LoraOptions"
    assert options.rank == 8 and options.alpha == 8.0 and options.resolution == 64 and options.trigger == ""
    assert options["rank"] == 8 and options.get("nothing", 3) == 3 and "trigger" in options
    assert dict(options)["learning_rate"] == 1e-4 and len(dict(options)) == len(ENGINE_OPTIONS) + 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.rank = 4
    with pytest.raises(KeyError):
        options["nothing"]
    field = dataclasses.fields(options)[0]
    assert field.name == "trigger" and field.metadata["help"].startswith("Trigger words")
    assert options.replace(rank=2).rank == 2 and options.rank == 8


def test_the_device_defaults_to_the_best_present(monkeypatch):
    monkeypatch.setattr("lorastack.core.devices.best_device", lambda: "mps")
    assert resolve((), {}, "lora").device == "mps"
    assert resolve((), {"device": "cpu"}, "lora").device == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.undo()
    if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        assert resolve((), {}, "lora").device == expected


def test_a_trainer_written_for_option_dicts_still_trains(plugin_manager, data, tmp_path, lorastack_home):
    from lorastack.core.interfaces import Option
    from lorastack.core.training.api import train
    from lorastack.plugins import hookimpl

    seen = {}

    class Old:
        name, description = "old-style", "Reads options by key."
        options = (Option("flavour", "str", "plain", "A flavour."),)

        def train(self, context, options):
            seen.update(flavour=options["flavour"], rank=context.options["rank"], plain=dict(options))
            return context.engine(context.dataset.items).train()

    class Plugin:
        @hookimpl
        def register_trainers(self, register):
            register(Old())

    plugin_manager.register(Plugin(), "old-style-plugin")
    result = train("old-style", "toy", data, output=tmp_path / "run", progress=False,
                   options={"flavour": "mint", "steps": 1, "device": "cpu"})  # fmt: skip
    assert result.adapter_path.exists() and seen["flavour"] == "mint" and seen["rank"] == 4
    assert seen["plain"]["flavour"] == "mint" and seen["plain"]["resolution"] == 64


def test_shell_completion_offers_trainers_options_and_choices(tmp_path):
    def complete(words: str) -> list[str]:
        env = {**os.environ, "_LORASTACK_COMPLETE": "bash_complete", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}  # fmt: skip
        run = subprocess.run([sys.executable, "-m", "lorastack.cli.main"], env=env, capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        return [line.split(",", 1)[1] for line in run.stdout.splitlines()]

    assert complete("lorastack train ") == ["dreambooth", "lora", "pivotal"]
    assert complete("lorastack train lora --targets ") == ["attention", "attention-ff", "all"]
    assert "--rank" in complete("lorastack train lora --ra")
