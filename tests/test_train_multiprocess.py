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


@pytest.mark.slow
def test_sdxl_pivotal_and_memory_options_train_one_model_on_two_processes(tiny_sdxl_dir, tiny_sd1_dir, tmp_path):
    """New token rows and both text encoders' LoRA synchronise too (pivotal tuning on SDXL, equal to one process
    with twice the batch), and gradient checkpointing, bf16, 8-bit AdamW and an int8 base keep working under DDP."""
    data = _images(tmp_path / "data", 4)
    home = tmp_path / "home"
    pivotal = {**BASE_OPTIONS, "steps": 3, "text_encoder_lr": 1e-3, "token": "aawxbc", "class_name": "square",
               "ti_steps": 1, "lr_scheduler": "cosine", "warmup_steps": 1}  # fmt: skip
    memory = {**BASE_OPTIONS, "resolution": 32, "steps": 2, "gradient_checkpointing": True, "mixed_precision": "bf16",
              "gradient_accumulation": 2, "text_encoder_lr": 1e-4}  # fmt: skip
    try:
        import bitsandbytes  # noqa: F401

        memory["optimizer"] = "adamw8bit"
    except ImportError:
        pass
    jobs = [
        {"trainer": "pivotal", "base": str(tiny_sdxl_dir), "data": str(data), "output": str(tmp_path / "piv-2"),
         "options": {**pivotal, "batch_size": 1}},
        {"trainer": "lora", "base": str(tiny_sd1_dir), "data": str(data), "output": str(tmp_path / "mem-2"),
         "options": {**memory, "batch_size": 1}, "name": "mem"},
        {"trainer": "lora", "base": str(tiny_sdxl_dir), "data": str(data), "output": str(tmp_path / "int8-2"),
         "options": {**BASE_OPTIONS, "resolution": 32, "steps": 2, "quantize_base": "torchao-int8"}},
    ]  # fmt: skip
    ranks = _launch(jobs, tmp_path, home, timeout=600)
    for first, second in zip(*(r["jobs"] for r in ranks)):
        assert first["digest"] == second["digest"] and first["losses"] == second["losses"]
    # the registry got one version, from the main process, and both processes report it
    assert ranks[0]["jobs"][1]["registered"] == ranks[1]["jobs"][1]["registered"] == "mem@1"
    piv = load_file(tmp_path / "piv-2" / "adapter.safetensors")
    assert {"text_encoder", "text_encoder_2"} <= {k.split(".")[0] for k in piv}

    os.environ["LORASTACK_HOME"] = str(home)
    one = train("pivotal", tiny_sdxl_dir, data, output=tmp_path / "piv-1", options={**pivotal, "batch_size": 2},
                progress=False)  # fmt: skip
    other = train("pivotal", tiny_sdxl_dir, data, output=tmp_path / "piv-b1", options={**pivotal, "batch_size": 1},
                  progress=False)  # fmt: skip
    assert one.losses == pytest.approx(ranks[0]["jobs"][0]["losses"], rel=1e-4)
    _assert_same_model(one.adapter_path, tmp_path / "piv-2" / "adapter.safetensors", other.adapter_path)
    embeddings = {k: v for k, v in piv.items() if "aawxbc" in k or k.startswith(("clip_l", "clip_g"))}
    reference = load_file(one.adapter_path)
    assert embeddings and all(torch.allclose(v, reference[k], atol=1e-4) for k, v in embeddings.items())


@pytest.mark.slow
def test_accelerate_launch_runs_the_cli_and_a_second_process_fails_with_the_first(tiny_sd1_dir, tmp_path):
    """The user's command: ``accelerate launch --multi_gpu --num_processes 2 $(which lorastack) train …`` (gloo on a
    machine without a GPU); a refused folder stops both processes with the main process's one-line error."""
    data = _images(tmp_path / "data", 2)
    lorastack = shutil.which("lorastack") or str(Path(sys.executable).with_name("lorastack"))
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]  # fmt: skip
    train_args = ["train", "lora", "--base", str(tiny_sd1_dir), "--data", str(data), "--steps", "2",
                  "--resolution", "32", "--text-encoder-lr", "1e-4", "--quiet", "--json"]  # fmt: skip
    env = _env(tmp_path / "home")
    done = subprocess.run([*launch, lorastack, *train_args, "-o", str(tmp_path / "run")], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["steps"] == 2  # one report, from the main process: the output is one JSON object
    assert json.loads((tmp_path / "run" / "run.json").read_text())["identity"]["processes"] == 2
    assert (tmp_path / "run" / "adapter.safetensors").is_file()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "other.txt").write_text("not a run")
    refused = subprocess.run([*launch, lorastack, *train_args, "-o", str(tmp_path / "full")], env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert refused.returncode != 0
    assert refused.stderr.count("is not empty and holds no run") == 2  # each process says it, once
    errors = [line for line in refused.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 2 and sum(e.endswith("(reported by the main process)") for e in errors) == 1
    # the launcher prints its own traceback of the failed child; lorastack's processes print none
    assert "training/api.py" not in refused.stderr and "training/run.py" not in refused.stderr


@pytest.mark.slow
def test_the_processes_share_the_class_images_they_generate(tiny_sd1_dir, tmp_path):
    """DreamBooth's class images under two processes: each process generates its half, both train on all of them,
    and one process later finds them all cached (the same images a one-process run would make)."""
    data = _images(tmp_path / "data", 2)
    home = tmp_path / "home"
    options = {**BASE_OPTIONS, "resolution": 32, "steps": 2, "token": "aawxbc", "class_name": "square",
               "class_images": 3}  # fmt: skip
    jobs = [{"trainer": "dreambooth", "base": str(tiny_sd1_dir), "data": str(data), "output": str(tmp_path / "two"),
             "options": options}]  # fmt: skip
    ranks = _launch(jobs, tmp_path, home)
    first, second = (r["jobs"][0] for r in ranks)
    assert first["digest"] == second["digest"]
    assert sorted([first["pipeline_calls"], second["pipeline_calls"]]) == [1, 2]  # 3 images, split 2 + 1
    folders = list((home / "cache" / "class-images").iterdir())
    assert len(folders) == 1 and sorted(p.name for p in folders[0].iterdir()) == [f"{i:05d}.png" for i in range(3)]
    generated = {p.name: p.read_bytes() for p in folders[0].iterdir()}

    os.environ["LORASTACK_HOME"] = str(tmp_path / "alone")  # one process, its own cache: the same images
    train("dreambooth", tiny_sd1_dir, data, output=tmp_path / "one", options=options, progress=False)
    alone = next((tmp_path / "alone" / "cache" / "class-images").iterdir())
    assert {p.name: p.read_bytes() for p in alone.iterdir()} == generated
