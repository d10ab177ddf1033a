"""Quiet by default: piped output holds lorastack's lines only; ``lorastack -v`` lets the libraries speak."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from adapter_cases import make_case

from lorastack.testing.models import load_pipeline

#: What the libraries print when they are not silenced: log prefixes, warnings, loading bars.
LIBRARY_LINE = re.compile(
    r"\[transformers\]|\[diffusers\]|Loading pipeline components|Loading weights|requires torchvision|"
    r"warning|it/s\]|%\||^[WIE]\d{4} \d\d:",  # the last: torch's own log handler
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def files(tiny_sd1_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("quiet")
    adapter = make_case(load_pipeline(tiny_sd1_dir), "peft", root / "style.safetensors", seed=1)
    return {"base": str(tiny_sd1_dir), "adapter": str(adapter), "out": str(root / "out")}


def _piped(*args: str, home) -> tuple[int, str, str]:
    env = {**os.environ, "LORASTACK_HOME": str(home), "LORASTACK_LOAD_PLUGINS": ""}
    for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "TORCH_LOGS"):
        env.pop(name, None)  # what a user's shell has: the libraries' own defaults
    done = subprocess.run([sys.executable, "-m", "lorastack.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def _library_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if LIBRARY_LINE.search(line)]


def test_inspect_prints_its_report_only(files, tmp_path):
    code, out, err = _piped("inspect", files["adapter"], home=tmp_path)
    assert code == 0, err
    assert out.startswith("file ") and err == ""
    assert _library_lines(out) == []


def test_generate_prints_its_images_only(files, tmp_path):
    args = ("generate", "a cat", "--base", files["base"], "--lora", files["adapter"], "--steps", "2", "--seed", "3")
    code, out, err = _piped(*args, "-o", files["out"], home=tmp_path)
    assert code == 0, err
    assert _library_lines(out + err) == [], out + err
    assert [line.split()[0].endswith(".png") for line in out.splitlines()] == [True]
    # the quiet is lorastack's doing: with -v the same run shows the libraries' loading bars and logs
    code, out, err = _piped("-v", *args, "-o", files["out"], home=tmp_path)
    assert code == 0 and "Loading pipeline components" in err, err


def test_train_prints_its_progress_and_result_only(tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    for i, colour in enumerate(("red", "blue")):
        Image.new("RGB", (64, 64), colour).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"a {colour} square")
    args = ("train", "lora", "--base", "toy", "--data", str(data), "--steps", "2", "--device", "cpu")
    code, out, err = _piped(*args, "-o", str(tmp_path / "run"), home=tmp_path / "home")
    assert code == 0, err
    assert _library_lines(out + err) == [], out + err
    assert [line for line in err.splitlines() if line.startswith("step ")], err  # its own progress stays


def test_resize_prints_its_report_only(files, tmp_path):
    """Arithmetic loads quantizer-aware libraries (torchao logs through torch's own handler when imported)."""
    out_file = str(tmp_path / "r.safetensors")
    code, out, err = _piped("resize", files["adapter"], "-o", out_file, "--rank", "1", home=tmp_path)
    assert code == 0, err
    assert err == "" and _library_lines(out) == [], out + err
    assert out.splitlines()[-1] == f"wrote {out_file} (diffusers format)"
