"""merge and bake killed with SIGKILL at their crash points: the output is the old file/folder or the complete new
one, never a partial one, the registry stays consistent, and a rerun finishes the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from arith_helpers import lora_layers, save, targets

from lorastack.adapters import read_adapter
from lorastack.core.arith import RECORD_KEY
from lorastack.registry import Registry

#: the CLI in a child process; ``--no-exchange`` first makes a folder bake use the move-aside order
CHILD = """
import sys
if sys.argv[1] == "--no-exchange":
    from lorastack.core import bake_folder
    bake_folder.EXCHANGE = None
    del sys.argv[1]
from lorastack.cli.main import main
main(sys.argv[1:])
"""


def lorastack(home, args, crash=None):
    env = {**os.environ, "LORASTACK_HOME": str(home)}
    env.pop("LORASTACK_CRASH_AT", None)
    if crash:
        env["LORASTACK_CRASH_AT"] = crash
    done = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    return done


@pytest.fixture
def inputs(tmp_path, tiny_sd1_pipe):
    weights = targets(tiny_sd1_pipe, limit=8)
    return [save(lora_layers(weights, rank=2, seed=i, std=0.1), tmp_path / f"in{i}.safetensors") for i in range(3)]


def _record(path):
    return json.loads(read_adapter(path).metadata.raw[RECORD_KEY])


@pytest.mark.parametrize(
    "point",
    [
        pytest.param("registry.import.before-commit", marks=pytest.mark.slow),  # two child processes each
        pytest.param("arith.after-write", marks=pytest.mark.slow),
        pytest.param("arith.after-register", marks=pytest.mark.slow),
    ],
)
def test_a_killed_merge_leaves_old_or_new_and_a_consistent_registry(tmp_path, inputs, point):
    home, out = tmp_path / "home", tmp_path / "merged.safetensors"
    old = out.write_bytes((inputs[2]).read_bytes())
    assert old > 0
    args = ["merge", inputs[0], f"{inputs[1]}:0.5", "-o", out, "--force", "--name", "me/merged"]
    done = lorastack(home, args, crash=point)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    if out.read_bytes() != inputs[2].read_bytes():  # not the old file: the whole new one
        assert _record(out)["method"] == "concat" and len(read_adapter(out).layers) == 8
    registry = Registry(home / "registry")
    assert not registry.verify().index
    versions = [r for r in registry.list(all_versions=True) if r["name"] == "me/merged"]
    assert len(versions) == (1 if point == "arith.after-register" else 0)
    again = lorastack(home, args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _record(out)["method"] == "concat"
    assert [r["name"] for r in Registry(home / "registry").list()] == ["me/merged"]


def _bake_record(folder):
    return json.loads((folder / "lorastack-bake.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "exchange"),
    [("bake.folder-written", True), ("bake.folder-exchanged", True), ("bake.folder-old-aside", False)],
)
def test_a_killed_folder_bake_leaves_old_or_new(tmp_path, tiny_sd1_dir, inputs, point, exchange):
    home, out = tmp_path / "home", tmp_path / "baked"
    flag = [] if exchange else ["--no-exchange"]
    first = lorastack(home, [*flag, "bake", tiny_sd1_dir, "--lora", inputs[0], "-o", out])
    assert first.returncode == 0, first.stderr[-2000:]
    args = [*flag, "bake", tiny_sd1_dir, "--lora", f"{inputs[1]}:0.7", "-o", out, "--force"]
    done = lorastack(home, args, crash=point)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    # the killed bake's new folder (or, after the exchange, the old one) is left at its temporary name
    assert _temporaries(tmp_path), sorted(p.name for p in tmp_path.iterdir())
    if point == "bake.folder-old-aside":
        # the path is missing for a moment here; the old folder lies complete aside and comes back first
        assert not out.exists()
        from lorastack.core.bake_folder import recover

        assert recover(out) and _bake_record(out)["sources"][0]["scale"] == 1.0
    else:
        scale = _bake_record(out)["sources"][0]["scale"]  # old (1.0) or new (0.7), whole either way
        assert scale == (0.7 if point == "bake.folder-exchanged" else 1.0)
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    again = lorastack(home, args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _bake_record(out)["sources"][0]["scale"] == 0.7
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".baked.") and p.name.endswith(".old")]
    assert not _temporaries(tmp_path)  # the rerun removed what the killed bake left


def _temporaries(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".baked.") and p.name.endswith(".tmp")]


def test_recover_removes_only_a_dead_bake_s_folders(tmp_path):
    from lorastack.core.bake_folder import recover, stale_temporaries, temporary_prefix

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(child.stdout)  # a process that has ended
    out = tmp_path / "baked"
    killed = tmp_path / f".baked.{dead}.abcd_123.tmp"
    running = tmp_path / f"{temporary_prefix(out)}efgh_456.tmp"  # this process: a bake still writing
    other = tmp_path / f".baked.v2.{dead}.abcd_123.tmp"  # another output's (baked.v2)
    other_aside = tmp_path / ".baked.v2.ijkl_789.old" / "folder"
    for folder in (killed / "unet", running, other, other_aside):
        folder.mkdir(parents=True)
    (other_aside / "model_index.json").write_text("{}")
    assert stale_temporaries(out) == [killed]
    assert not recover(out)  # baked.v2's old folder stays where it is, and is not moved to baked
    assert not killed.exists() and running.is_dir() and other.is_dir() and other_aside.is_dir()
    assert not out.exists()
