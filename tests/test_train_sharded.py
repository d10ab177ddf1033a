"""Sharded training (``--shard fsdp|fsdp-grad-op``, or an accelerate FSDP config): FSDP2 over the trained
components on two CPU processes (gloo). Each process holds half the model, and the model is the one DDP and one
process with twice the batch train; a sharded run resumes unsharded and the other way round."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_multiprocess import BASE_OPTIONS, _assert_same_model, _env, _images, _launch

from lorastack.core.training.api import train
from lorastack.core.training.options import TrainingError
from lorastack.core.training.sharded import accelerate_shard, block_units

DOCS = Path(__file__).resolve().parents[1] / "docs" / "training.md"


# --- what needs no second process ---------------------------------------------------------------------------------


def test_an_accelerate_fsdp_config_selects_the_shard_mode():
    assert accelerate_shard({}) is None and accelerate_shard({"ACCELERATE_USE_FSDP": "false"}) is None
    fsdp2 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
    assert accelerate_shard(fsdp2) == "fsdp"
    assert accelerate_shard({**fsdp2, "FSDP_RESHARD_AFTER_FORWARD": "False"}) == "fsdp-grad-op"
    with pytest.raises(TrainingError, match="fsdp_version: 1; lorastack shards with FSDP2"):
        accelerate_shard({"ACCELERATE_USE_FSDP": "true"})
    with pytest.raises(TrainingError, match="fsdp_reshard_after_forward: sometimes; valid values are true"):
        accelerate_shard({**fsdp2, "FSDP_RESHARD_AFTER_FORWARD": "sometimes"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quantize_base": "torchao-int8"}, "cannot shard a quantized base"),
        ({"optimizer": "adamw8bit"}, "use --optimizer adamw"),
        ({"mixed_precision": "fp16", "device": "cuda"}, "--mixed-precision bf16 or no"),  # checked before the GPU
    ],
)
def test_what_a_sharded_run_cannot_do_is_refused_before_the_base_loads(tiny_sd1_dir, tmp_path, lorastack_home,
                                                                        options, message, monkeypatch):  # fmt: skip
    import lorastack.core.base as base

    monkeypatch.setattr(base, "load_base", lambda *a, **k: pytest.fail("the base was loaded"))
    with pytest.raises(TrainingError, match=re.escape(message)) as refused:
        train("lora", tiny_sd1_dir, _images(tmp_path / "data", 1), output=tmp_path / "run",
              options={"shard": "fsdp", "device": "cpu", **options}, progress=False)  # fmt: skip
    assert "\n" not in str(refused.value) and str(refused.value).startswith("--shard fsdp ")


def test_one_process_says_it_shards_nothing(tiny_sd1_dir, tmp_path, lorastack_home, monkeypatch, caplog):
    import lorastack.core.base as base

    def stop(*args, **kwargs):
        raise TrainingError("stopped where the base would load")

    monkeypatch.setattr(base, "load_base", stop)
    with pytest.raises(TrainingError, match="stopped where the base would load"):
        train("lora", tiny_sd1_dir, _images(tmp_path / "data", 1), output=tmp_path / "run",
              options={"shard": "fsdp-grad-op"}, progress=False)  # fmt: skip
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert said == ["--shard fsdp-grad-op splits a model between processes, and this run has one: it trains "
                    "unsharded (launch it with torchrun --nproc_per_node N or accelerate launch)"]  # fmt: skip


def test_pivotal_tuning_is_refused_sharded(tiny_sd1_dir, tmp_path, lorastack_home, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch --config_file fsdp.yaml passes on
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(TrainingError, match=r"^--shard fsdp does not shard new token rows"):
        train("pivotal", tiny_sd1_dir, _images(tmp_path / "data", 1), output=tmp_path / "run",
              options={"token": "aawxbc", "class_name": "square"}, progress=False)  # fmt: skip


def test_the_units_are_the_outermost_blocks(tiny_sd1_pipe, tiny_flux_pipe):
    def same(units, expected):
        return len(units) == len(expected) and {id(m) for m in units} == {id(m) for m in expected}

    unet = tiny_sd1_pipe.unet
    assert same(block_units(unet), [*unet.down_blocks, unet.mid_block, *unet.up_blocks])
    transformer = tiny_flux_pipe.transformer
    assert same(block_units(transformer), [*transformer.transformer_blocks, *transformer.single_transformer_blocks])
    encoder = tiny_sd1_pipe.text_encoder
    assert same(block_units(encoder), list(encoder.encoder.layers))
    assert same(block_units(tiny_flux_pipe.text_encoder_2), list(tiny_flux_pipe.text_encoder_2.encoder.block))


# --- two processes ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_sharded_processes_train_the_model_one_process_trains_and_resume_either_way(tiny_sd1_dir, tmp_path):
    """fsdp: each process holds half of the UNet and the text encoder; the model equals one process's with twice
    the batch. A run cut at step 2 resumes sharded the other way (fsdp-grad-op) or not at all (DDP), and ends as a
    whole sharded run does."""
    data = _images(tmp_path / "data", 3)
    home = tmp_path / "home"
    options = {**BASE_OPTIONS, "steps": 4, "text_encoder_lr": 1e-3, "batch_size": 1, "checkpoint_every": 2,
               "validation_prompts": "a red square", "validate_every": 4}  # fmt: skip

    def job(output: str, steps: int, shard: str, resume: bool = False) -> dict:
        return {"trainer": "lora", "base": str(tiny_sd1_dir), "data": str(data), "output": str(tmp_path / output),
                "options": {**options, "steps": steps, "shard": shard}, "resume": resume}  # fmt: skip

    jobs = [job("whole", 4, "fsdp"), job("cut", 2, "fsdp"), job("cut", 4, "fsdp-grad-op", resume=True),
            job("cut-ddp", 2, "fsdp"), job("cut-ddp", 4, "none", resume=True)]  # fmt: skip
    ranks = _launch(jobs, tmp_path, home, timeout=600)
    for first, second in zip(*(r["jobs"] for r in ranks)):
        assert first["digest"] == second["digest"] and first["losses"] == second["losses"]
    whole = ranks[0]["jobs"][0]
    assert whole["shard"] == "fsdp" and [r["jobs"][0]["held"] for r in ranks] == pytest.approx([0.5, 0.5], abs=1e-3)
    assert ranks[0]["jobs"][4]["shard"] == "none" and ranks[0]["jobs"][4]["held"] == 1.0
    run = tmp_path / "whole"
    assert {"unet", "text_encoder"} <= {k.split(".")[0] for k in load_file(run / "adapter.safetensors")}
    assert (run / "samples" / "step-000004.png").is_file()  # sampled by both processes, written by the main one
    state = torch.load(run / "checkpoints" / "step-000004" / "state.pt", weights_only=True)
    full = {n: p.numel() for n, p in state["params"].items()}
    assert full and all(full[n] == t.numel() for n, t in state["params"].items())  # whole tensors, not shards
    exp_avg = [entry["exp_avg"] for entry in state["optimizer"]["state"].values()]
    assert sorted(t.numel() for t in exp_avg) == sorted(full.values())
    # resumed sharded the other way, or unsharded: the losses and the model of the uninterrupted run
    for cut in (2, 4):
        assert ranks[0]["jobs"][cut]["losses"] == pytest.approx(whole["losses"], rel=1e-4)
        assert torch.allclose(_flat(tmp_path / ("cut" if cut == 2 else "cut-ddp")), _flat(run), atol=1e-4)

    import os

    os.environ["LORASTACK_HOME"] = str(home)
    plain = {k: v for k, v in options.items() if k not in ("validation_prompts", "validate_every")}
    one = train("lora", tiny_sd1_dir, data, output=tmp_path / "one", options={**plain, "batch_size": 2},
                progress=False)  # fmt: skip
    assert one.losses == pytest.approx(whole["losses"], rel=1e-4)
    other = train("lora", tiny_sd1_dir, data, output=tmp_path / "b1", options=plain, progress=False)
    assert other.losses != pytest.approx(whole["losses"], rel=1e-3)
    _assert_same_model(one.adapter_path, run / "adapter.safetensors", other.adapter_path)


def _flat(run: Path) -> torch.Tensor:
    tensors = load_file(run / "adapter.safetensors")
    return torch.cat([tensors[k].flatten() for k in sorted(tensors)])


@pytest.mark.slow
def test_sdxl_flux_and_an_evaluated_run_train_sharded(tiny_sdxl_dir, tiny_flux_dir, tmp_path):
    """Both SDXL text encoders (whose hidden states are read through transformers' output recorder), bf16,
    gradient checkpointing and accumulation under fsdp-grad-op; FLUX.1's transformer blocks and sampling under fsdp,
    equal to the same run under DDP; --eval-every with the toy evaluator, which every process draws for."""
    from lorastack import toy
    from lorastack.toy.demo import TOKEN, concept_images

    data = _images(tmp_path / "data", 4)
    xl = {**BASE_OPTIONS, "resolution": 32, "steps": 2, "text_encoder_lr": 1e-3, "mixed_precision": "bf16",
          "gradient_checkpointing": True, "gradient_accumulation": 2, "shard": "fsdp-grad-op"}  # fmt: skip
    flux = {"resolution": 64, "sample_steps": 2, "seed": 0, "learning_rate": 5e-2, "steps": 2, "text_encoder_lr": 1e-3,
            "validation_prompts": "a red square"}  # fmt: skip
    evaluated = {"token": TOKEN, "resolution": toy.SIZE, "rank": 2, "steps": 2, "eval_every": 1, "shard": "fsdp",
                 "eval_metric": "toy.fidelity", "evaluators": "toy", "eval_seeds": 1, "sample_steps": 2}  # fmt: skip
    jobs = [
        {"trainer": "lora", "base": str(tiny_sdxl_dir), "data": str(data), "output": str(tmp_path / "xl"),
         "options": xl},
        {"trainer": "lora", "base": str(tiny_flux_dir), "data": str(data), "output": str(tmp_path / "flux"),
         "options": {**flux, "shard": "fsdp"}},
        {"trainer": "lora", "base": str(tiny_flux_dir), "data": str(data), "output": str(tmp_path / "flux-ddp"),
         "options": flux},
        {"trainer": "dreambooth", "base": "toy", "data": str(concept_images(tmp_path / "concept", 2, 0)),
         "output": str(tmp_path / "toy"), "options": evaluated},
        {"trainer": "dreambooth", "base": "toy", "data": str(tmp_path / "concept"),
         "output": str(tmp_path / "toy-ddp"), "options": {**evaluated, "shard": "none"}},
    ]  # fmt: skip
    ranks = _launch(jobs, tmp_path, tmp_path / "home", timeout=600)
    for first, second in zip(*(r["jobs"] for r in ranks)):
        assert first["digest"] == second["digest"] and first["losses"] == second["losses"]
    xl_job, flux_job, ddp_job, toy_job, toy_ddp = ranks[1]["jobs"]
    assert xl_job["shard"] == "fsdp-grad-op" and xl_job["held"] == pytest.approx(0.5, abs=1e-3)
    xl_adapter = load_file(tmp_path / "xl" / "adapter.safetensors")
    assert {"text_encoder", "text_encoder_2"} <= {k.split(".")[0] for k in xl_adapter}
    assert flux_job["shard"] == "fsdp" and flux_job["held"] == pytest.approx(0.5, abs=2e-3)
    assert ddp_job["shard"] == "none" and ddp_job["held"] == 1.0
    assert flux_job["losses"] == pytest.approx(ddp_job["losses"], rel=1e-4)
    assert torch.allclose(_flat(tmp_path / "flux"), _flat(tmp_path / "flux-ddp"), atol=1e-4)
    assert (tmp_path / "flux" / "samples" / "step-000002.png").is_file()
    # evaluated by the main process while the other waits (DDP), or drawn by both (sharded): the same scores
    state = json.loads((tmp_path / "toy" / "run.json").read_text())
    assert toy_job["shard"] == "fsdp" and toy_ddp["shard"] == "none" and state["status"] == "done"
    assert sorted(state["evaluation"]["steps"], key=int) == ["0", "1", "2"]
    ddp_state = json.loads((tmp_path / "toy-ddp" / "run.json").read_text())
    for step in ("0", "1", "2"):
        scores = {(r["adapter"], r["metric"]): r["mean"] for r in state["evaluation"]["steps"][step]}
        ddp_scores = {(r["adapter"], r["metric"]): r["mean"] for r in ddp_state["evaluation"]["steps"][step]}
        assert scores.keys() == ddp_scores.keys() and scores == pytest.approx(ddp_scores, abs=0.02)


def _docs_block(marker: str) -> str:
    """The fenced block of docs/training.md that follows the line holding ``marker``."""
    text = DOCS.read_text()
    start = text.index(marker)
    return text[start:].split("```", 2)[1].split("\n", 1)[1]


@pytest.mark.slow
def test_the_documented_accelerate_fsdp_config_runs_the_cli_sharded(tiny_sd1_dir, tmp_path):
    """docs/training.md's FSDP2 config file and command, as a user runs them (on a machine without a GPU accelerate
    keeps its CPU process type, and lorastack shards from the config it passes on)."""
    config = tmp_path / "fsdp.yaml"
    config.write_text(_docs_block("<!-- fsdp.yaml -->"))
    command = _docs_block("<!-- fsdp command -->").strip()
    assert command.startswith("accelerate launch --config_file fsdp.yaml $(which lorastack) train lora")
    data = _images(tmp_path / "data", 2)
    lorastack = shutil.which("lorastack") or str(Path(sys.executable).with_name("lorastack"))
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    launch = [accelerate, "launch", "--config_file", str(config), "--main_process_port", "0", lorastack, "train",
              "lora", "--base", str(tiny_sd1_dir), "--data", str(data), "-o", str(tmp_path / "run"),
              "--resolution", "32", "--text-encoder-lr", "1e-4", "--quiet"]  # fmt: skip
    env = _env(tmp_path / "home")
    done = subprocess.run([*launch, "--steps", "2", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # one report, from the main process
    assert report["processes"] == 2 and report["shard"] == "fsdp" and report["held"] == pytest.approx(0.5, abs=1e-3)
    assert (tmp_path / "run" / "adapter.safetensors").is_file()
    again = subprocess.run([*launch, "--steps", "3", "--resume"], env=env, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "processes: 2, sharded (fsdp): each held 50% of the trained components" in again.stdout
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "done"
