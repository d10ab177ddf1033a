"""Outputs that cannot be written (a file where a folder goes, FIFOs, read-only folders, existing files) are refused
with one line naming them before generate, reproduce, demo or train start their work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cli_helpers import run_cli
from generate_helpers import one_line_error, tiny_png
from test_recipe_validation import TXT2IMG, png, unblocking

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
