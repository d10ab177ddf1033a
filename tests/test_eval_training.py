"""``train --eval-every`` on the toy base: a resumed run keeps its step-0 scores and the base's images; on the demo's
recipe the toy evaluator picks a trained checkpoint over the base (slow)."""

from __future__ import annotations

import json

import pytest

from lorastack import toy
from lorastack.core import evaluation_training
from lorastack.core.training.api import train
from lorastack.toy.demo import TOKEN, concept_images

EVAL = {"eval_metric": "toy.fidelity", "evaluators": "toy", "eval_seeds": 2, "sample_steps": 4}


@pytest.fixture(scope="module")
def toy_pipe():
    from lorastack.core.base import load_base

    pipe = load_base("toy")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def recipe(tmp_path, **options):
    """The demo's recipe (a few yellow stars, prior preservation on the base's own shapes), smaller."""
    data = concept_images(tmp_path / "data", 4, 0) if not (tmp_path / "data").exists() else tmp_path / "data"
    regular = tmp_path / "class"
    if not regular.exists():
        toy.write_dataset(regular, 4, seed=1)
    return data, {"token": TOKEN, "instance_prompt": "a {token} on a white background", "class_data": str(regular),
                  "resolution": toy.SIZE, "rank": 8, "learning_rate": 4e-3, "targets": "attention-ff",
                  "text_encoder_lr": 1e-3, "batch_size": 4, "latents": "mean", "seed": 0, **EVAL,
                  **options}  # fmt: skip


PROMPTS = f"a {TOKEN} on a white background|a green square on a white background"


@pytest.mark.slow  # three short toy trainings and ten drawings: ~35 s of CPU (minutes of wall time on a busy machine)
def test_a_resumed_run_keeps_its_step_0_scores_and_base_images(tmp_path, toy_pipe, monkeypatch):
    drawn = []
    real = evaluation_training.draw
    monkeypatch.setattr(evaluation_training, "draw", lambda pipe, prompt, *a, **k: drawn.append(prompt) or real(
        pipe, prompt, *a, **k))  # fmt: skip
    data = concept_images(tmp_path / "data", 2, 0)
    options = {"token": TOKEN, "resolution": toy.SIZE, "rank": 2, "batch_size": 1, "steps": 1, "eval_every": 1,
               **EVAL, "eval_seeds": 1, "sample_steps": 1, "eval_prompts": PROMPTS}  # fmt: skip
    prompts = PROMPTS.split("|")
    run = tmp_path / "run"
    train("dreambooth", "toy", data, output=run, pipe=toy_pipe, register=False, progress=False, options=options)
    assert drawn == prompts * 2  # the base (step 0), then step 1
    first = json.loads((run / "run.json").read_text())["evaluation"]
    assert sorted((run / "evaluation").iterdir()) == [run / "evaluation" / f"base-{k:03d}.png" for k in range(2)]
    drawn.clear()
    train("dreambooth", "toy", data, output=run, pipe=toy_pipe, register=False, progress=False, resume=True,
          options={**options, "steps": 2})  # fmt: skip
    assert drawn == prompts  # step 2 only: the base was neither drawn nor scored again
    state = json.loads((run / "run.json").read_text())["evaluation"]
    assert state["steps"]["0"] == first["steps"]["0"] and state["steps"]["1"] == first["steps"]["1"]
    assert sorted(state["steps"], key=int) == ["0", "1", "2"]
    leak = [r for r in state["steps"]["2"] if r["metric"] == "leak" and r["adapter"]]
    assert leak and leak[0]["n"] == 1  # compared with the base's image read back from the run folder
    # another evaluation on resume (more seeds): the old scores do not mix with the new, the base is drawn again
    drawn.clear()
    train("dreambooth", "toy", data, output=run, pipe=toy_pipe, register=False, progress=False, resume=True,
          options={**options, "steps": 2, "eval_seeds": 2})  # fmt: skip
    state = json.loads((run / "run.json").read_text())["evaluation"]
    assert drawn == prompts and sorted(state["steps"]) == ["0"] and state["best"] == "base"
    assert all(r["n"] == 2 for r in state["steps"]["0"])


@pytest.mark.slow  # trains 60 steps of the demo's recipe and draws 16 images: minutes on 2 cores
def test_eval_every_picks_a_trained_checkpoint_over_the_base(tmp_path, toy_pipe):
    data, options = recipe(tmp_path, steps=60, eval_every=20)
    result = train("dreambooth", "toy", data, output=tmp_path / "run", pipe=toy_pipe, register=False,
                   progress=False, options=options)  # fmt: skip
    state = json.loads((tmp_path / "run" / "run.json").read_text())["evaluation"]
    fidelity = {int(step): next(r["mean"] for r in rows if r["metric"] == "fidelity" and (r["adapter"] is None) ==
                                (step == "0")) for step, rows in state["steps"].items()}  # fmt: skip
    assert sorted(fidelity) == [0, 20, 40, 60]
    assert result.evaluation["best_step"] > 0 and state["best"] == f"step-{result.evaluation['best_step']:06d}"
    assert fidelity[result.evaluation["best_step"]] == max(fidelity.values()) >= fidelity[0] + 0.2, fidelity
    assert (tmp_path / "run" / "checkpoints" / state["best"] / "adapter.safetensors").is_file()  # a kept checkpoint
