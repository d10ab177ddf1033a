"""Every CLI error path shows the same one line and exit code through ``CliRunner`` and through the shell."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from lorastack.cli.main import cli

#: (arguments, exit code, text the error line holds). {bad} is a file that is not an adapter, {png} a picture
#: without a recipe, {missing} a path that does not exist, {file} an existing file where a folder is wanted.
CASES = [
    (["inspect", "{missing}"], 1, "no such file"),
    (["inspect", "{bad}"], 1, "bad.safetensors: header length"),
    (["convert", "{bad}", "--format", "ckpt", "-o", "{out}"], 2, "'ckpt' is not one of 'diffusers', 'kohya'"),
    (["convert", "{bad}", "-o", "{out}"], 2, "Missing option '--format'"),
    (["show", "me/nothing"], 1, "no adapter named 'me/nothing'"),
    (["export", "me/nothing", "-o", "{out}"], 1, "no adapter named 'me/nothing'"),
    (["tag", "me/nothing", "bad tag"], 1, "tag 'bad tag' contains ' '"),
    (["rm", "me/nothing"], 1, "say what to remove"),
    (["gc", "--grace", "-1"], 2, "'--grace': -1.0 is not in the range"),
    (["pull", "not a repo"], 1, "not a Hub repo id"),
    (["dataset", "{missing}"], 1, "does not exist and no source recognises it"),
    (["caption", "{missing}", "--captioner", "nosuch"], 1, "unknown captioner 'nosuch'; available:"),
    (["generate", "a cat", "--base", "{missing}", "--lora", "{bad}:1e9"], 1, "the scale '1e9' is out of range"),
    (["generate", "a cat", "--base", "{missing}"], 1, "missing: no such file or folder"),
    (["generate", "a cat"], 2, "give --base"),
    (["reproduce", "{png}"], 1, "plain.png: has no lorastack recipe"),
    (["train", "lora", "--data", "{missing}"], 2, "--base"),
    (["train", "lora", "--base", "toy", "--data", "{missing}", "--steps", "0"], 2, "--steps"),
    (["nosuch"], 2, "No such command 'nosuch'"),
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("cli-errors")
    bad = root / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    png = root / "plain.png"
    Image.new("RGB", (8, 8)).save(png)
    (root / "a-file").write_text("x")
    return {"bad": bad, "png": png, "missing": root / "missing", "file": root / "a-file", "out": root / "out.st"}


def _env(tmp_path) -> dict[str, str]:
    return {
        "LORASTACK_HOME": str(tmp_path / "home"),
        "LORASTACK_CONFIG": str(tmp_path / "no-config.toml"),
        "LORASTACK_LOAD_PLUGINS": "",
        "HF_HUB_OFFLINE": "1",
    }


@pytest.mark.parametrize("args, code, message", CASES, ids=[" ".join(c[0][:2]) for c in CASES])
def test_the_same_one_line_from_cliRunner_and_the_shell(args, code, message, paths, tmp_path, monkeypatch):
    args = [a.format(**paths) for a in args]
    env = _env(tmp_path)
    monkeypatch.delenv("LORASTACK_RAISE_ERRORS", raising=False)
    runner = CliRunner().invoke(cli, args, env=env)
    shell = subprocess.run(
        [sys.executable, "-m", "lorastack.cli.main", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (runner.exit_code, shell.returncode) == (code, code), (runner.stderr, shell.stderr)
    assert runner.stderr == shell.stderr and runner.stdout == shell.stdout == ""
    line = shell.stderr.splitlines()[-1]
    assert line.startswith("Error: ") and message in line, shell.stderr
    assert "Traceback" not in shell.stderr
    if code == 1:  # lorastack's own errors: that one line and nothing else
        assert shell.stderr.count("\n") == 1


def test_raise_errors_re_raises_with_the_traceback(paths, tmp_path):
    env = {**os.environ, **_env(tmp_path), "LORASTACK_RAISE_ERRORS": "1"}
    shell = subprocess.run(
        [sys.executable, "-m", "lorastack.cli.main", "inspect", str(paths["missing"])],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shell.returncode == 1 and "Traceback" in shell.stderr and "AdapterFileError" in shell.stderr
