"""Training on two processes (gloo on the CPU): one run folder, the same adapter on both processes, and the same
adapter as one process trained with twice the batch.

``accelerate launch --cpu`` starts a single process whatever ``--num_processes`` says (accelerate 1.x launches
several CPU processes only through mpirun), so these tests launch with ``torchrun``, which is what
``accelerate launch --multi_gpu`` runs, and with ``accelerate launch --multi_gpu`` itself, which on a machine without
a GPU trains on the CPU with gloo.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lorastack.core.training.api import train

WORKER = Path(__file__).with_name("train_worker.py")
COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 210, 40)]
BASE_OPTIONS = {"resolution": 128, "sample_steps": 2, "seed": 3, "learning_rate": 1e-3}


def _images(root: Path, count: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.new("RGB", (48, 40), COLOURS[i % len(COLOURS)])
        image.paste((255, 255, 255), (8 + 4 * i, 8, 24, 24))
        image.save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(f"a square, colour {i}")
    return root


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "LORASTACK_HOME": str(home), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def _launch(jobs: list[dict], tmp_path: Path, home: Path, timeout: int = 300) -> list[dict]:
    """Run the jobs on two processes with torchrun; each process's report, rank 0 first."""
    jobs_file, out = tmp_path / "jobs.json", tmp_path / "ranks"
    out.mkdir()
    jobs_file.write_text(json.dumps(jobs))
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    command = [torchrun, "--standalone", "--nproc_per_node", "2", str(WORKER), str(jobs_file), str(out)]
    done = subprocess.run(command, env=_env(home), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]


def _trained(path: Path) -> dict[str, torch.Tensor]:
    """The adapter's LoRA factors by kind: every A and every B matrix of a file, flattened and joined."""
    tensors = load_file(path)
    return {
        kind: torch.cat([v.flatten() for k, v in sorted(tensors.items()) if kind in k])
        for kind in ("lora_A", "lora_B")
    }


def _assert_same_model(reference: Path, candidate: Path, other: Path) -> None:
    """``candidate`` equals ``reference`` within float tolerance: far closer to it than ``other`` (a run with another
    global batch) is. AdamW moves a weight whose gradient is float noise by a whole step of either sign, so the
    tolerance is relative to what a real difference in training does, not a fixed epsilon."""
    ref, cand, far = _trained(reference), _trained(candidate), _trained(other)
    for kind in ref:
        assert (cand[kind] - ref[kind]).norm() < 0.05 * (far[kind] - ref[kind]).norm(), kind


def _emulated(tmp_path: Path, name: str, base, data, options: dict, processes: int = 1, index: int = 0):
    """Train in this process as process ``index`` of ``processes`` would (its slice of every global batch, no
    gradient reduction); the gradients of its first optimizer step, by parameter name."""
    from lorastack.core.training.engine import Engine

    grads: dict[str, torch.Tensor] = {}
    make_accelerator, make_optimizer = Engine._accelerator, Engine._optimizer

    class AsProcess:
        def __init__(self, accelerator):
            self._accelerator, self.num_processes, self.process_index = accelerator, processes, index

        def __getattr__(self, name):
            return getattr(self._accelerator, name)

    def optimizer(self, params):
        def record(*_):
            if not grads:
                grads.update({n: p.grad.clone() for n, p in params.items() if p.grad is not None})

        opt = make_optimizer(self, params)
        opt.register_step_pre_hook(record)
        return opt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Engine, "_accelerator", lambda self: AsProcess(make_accelerator(self)))
        mp.setattr(Engine, "_optimizer", optimizer)
        train("lora", base, data, output=tmp_path / name, options=options, progress=False)
    return grads


def test_each_process_computes_its_slice_of_one_global_batch(tiny_sd1_dir, tmp_path, lorastack_home):
    """The gradient two processes reduce (their mean) is the gradient one process computes for twice the batch:
    the same images, noise and timesteps, whatever the split, a short batch at an epoch's end included.

    At 128 px: the tiny UNet's 32-channel GroupNorms over 1×1 and 2×2 maps (32 and 64 px) are so ill-conditioned
    in float32 that a batch of two and two batches of one differ by up to 20 % there (in float64 by 1e-12)."""
    data = _images(tmp_path / "data", 3)  # global batches of 2 and 1: in the second, process 1 computes nothing
    # two micro-batches (the full one and the short one) in the one step; no clipping (it is not linear)
    options = {**BASE_OPTIONS, "steps": 1, "gradient_accumulation": 2, "max_grad_norm": 0, "text_encoder_lr": 1e-3}
    whole = _emulated(tmp_path, "one", tiny_sd1_dir, data, {**options, "batch_size": 2})
    parts = [_emulated(tmp_path, f"part-{r}", tiny_sd1_dir, data, {**options, "batch_size": 1}, 2, r)
             for r in range(2)]  # fmt: skip
    assert set(whole) == set(parts[0]) == set(parts[1]) and any(n.startswith("text_encoder.") for n in whole)
    reduced = {n: (parts[0][n] + parts[1][n]) / 2 for n in whole}
    for n in whole:
        torch.testing.assert_close(reduced[n], whole[n], rtol=1e-4, atol=1e-7)
    assert any(not torch.allclose(parts[0][n], parts[1][n]) for n in whole)  # each process computed its own slice


@pytest.mark.slow
def test_two_processes_train_one_model_equal_to_one_process_with_twice_the_batch(tiny_sd1_dir, tmp_path):
    data = _images(tmp_path / "data", 3)
    home = tmp_path / "home"
    options = {**BASE_OPTIONS, "steps": 3, "text_encoder_lr": 1e-3}
    jobs = [{"trainer": "lora", "base": str(tiny_sd1_dir), "data": str(data), "output": str(tmp_path / "run-2"),
             "options": {**options, "batch_size": 1}}]  # fmt: skip
    ranks = _launch(jobs, tmp_path, home)
    assert [r["processes"] for r in ranks] == [2, 2]
    first, second = (r["jobs"][0] for r in ranks)
    assert first["digest"] == second["digest"] and first["digest"]  # one model on both processes
    assert first["losses"] == second["losses"]  # the loss of the whole batch, reduced
    adapter = tmp_path / "run-2" / "adapter.safetensors"
    assert {"unet", "text_encoder"} <= {k.split(".")[0] for k in load_file(adapter)}
    run = json.loads((tmp_path / "run-2" / "run.json").read_text())
    assert run["identity"]["processes"] == 2 and run["status"] == "done"

    os.environ["LORASTACK_HOME"] = str(home)  # the same caches the launch filled
    one = train("lora", tiny_sd1_dir, data, output=tmp_path / "run-1", options={**options, "batch_size": 2},
                progress=False)  # fmt: skip
    assert one.processes == 1
    assert one.losses == pytest.approx(first["losses"], rel=1e-4)
    other = train("lora", tiny_sd1_dir, data, output=tmp_path / "run-b1", options={**options, "batch_size": 1},
                  progress=False)  # fmt: skip
    assert other.losses != pytest.approx(first["losses"], rel=1e-3)
    _assert_same_model(one.adapter_path, adapter, other.adapter_path)
