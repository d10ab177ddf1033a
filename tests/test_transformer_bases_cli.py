"""The component options on the command line: generate and train take them, a FLUX.1 single file generates with
them, and a missing part is one line naming its flag; ``python -m lorastack.testing single-file`` writes the files."""

import pytest
from cli_helpers import run_cli
from click.testing import CliRunner

from lorastack.core.errors import BaseModelError
from lorastack.testing.__main__ import main as lorastack_testing_cli

FLAGS = ("--text-encoder", "--text-encoder-2", "--text-encoder-3", "--vae", "--t5-tokenizer")


@pytest.fixture(scope="module")
def flux_files(tiny_pipe_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("flux-files")
    result = CliRunner().invoke(lorastack_testing_cli, ["single-file", str(tiny_pipe_dir("flux")), str(out)])
    assert result.exit_code == 0, result.output
    return {line.split(": ")[0]: line.split(": ")[1] for line in result.output.splitlines() if ": " in line}


@pytest.mark.parametrize("command", [["generate"], ["train", "lora"]])
def test_commands_taking_base_offer_the_component_options(command):
    code, out, _ = run_cli(*command, "--help")
    assert code == 0 and all(flag in out for flag in FLAGS)


def test_generate_with_component_files(flux_files, tiny_flux_dir, tmp_path, lorastack_home):
    code, _, err = run_cli(
        "generate", "a cat", "--base", flux_files["transformer"], "--base-config", tiny_flux_dir, "--text-encoder",
        flux_files["text_encoder"], "--text-encoder-2", flux_files["text_encoder_2"], "--vae", flux_files["vae"],
        "--steps", "1", "--size", "64", "--seed", "3", "--device", "cpu", "-o", tmp_path / "out",
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "out" / "00000-3.png").is_file()


def test_missing_part_is_one_line_naming_its_flag(flux_files, tiny_flux_dir, tmp_path, lorastack_home):
    code, _, err = run_cli(
        "generate", "a cat", "--base", flux_files["transformer"], "--base-config", tiny_flux_dir, "--text-encoder",
        flux_files["text_encoder"], "--vae", flux_files["vae"], "--device", "cpu", "-o", tmp_path / "out",
    )  # fmt: skip
    assert code == 1 and "Traceback" not in err
    assert err.strip().count("\n") == 0 and "without T5 v1.1 XXL; give --text-encoder-2" in err


def test_train_passes_the_parts_to_load_base(flux_files, tmp_path, monkeypatch, lorastack_home):
    seen = {}

    def fake_load_base(base, **kwargs):
        seen.update(kwargs, base=base)
        raise BaseModelError("stop here")

    monkeypatch.setattr("lorastack.core.base.load_base", fake_load_base)
    data = tmp_path / "data"
    data.mkdir()
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (64, 64), (i * 100, 50, 50)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text("a red square")
    code, _, err = run_cli(
        "train", "lora", "--base", flux_files["transformer"], "--data", data, "--vae", flux_files["vae"],
        "--steps", "1", "-o", tmp_path / "run",
    )  # fmt: skip
    assert code == 1 and "stop here" in err, err
    assert seen["vae"].name == "ae.safetensors" and "text_encoder" not in seen


@pytest.mark.slow  # a subprocess with the network cut off (test_base.py runs the same check for SD by default)
def test_single_file_never_touches_the_network(flux_files, tiny_flux_dir, tmp_path):
    """Online mode, but the Hub endpoint is a closed port and the cache empty: any download would fail the load."""
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        from lorastack.core.base import load_base
        pipe = load_base({flux_files["transformer"]!r}, config={str(tiny_flux_dir)!r},
                         text_encoder={flux_files["text_encoder"]!r}, text_encoder_2={flux_files["text_encoder_2"]!r},
                         vae={flux_files["vae"]!r})
        print(type(pipe).__name__)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "FluxPipeline"
