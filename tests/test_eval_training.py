"""``train --eval-every`` on the toy base: a resumed run keeps its step-0 scores and the base's images; on the demo's
flow the adapter beats the base by the toy evaluator and the best checkpoint is a trained one (slow)."""

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


@pytest.mark.slow  # the demo's flow at 100 steps (one training serves both claims): minutes on 2 cores
def test_the_demo_adapter_beats_the_base_and_eval_every_picks_a_trained_checkpoint(tmp_path, lorastack_home):
    """With the toy evaluator: the demo's adapter scores clearly higher than the base on its token prompt and
    leaks little on a plain prompt; ``--eval-every`` on the demo's run picks a trained checkpoint over step 0."""
    from lorastack.toy.demo import run_demo

    result = run_demo(tmp_path / "demo", steps=100, images=8, seeds=2, name=None, progress=False, log=lambda _: None,
                      options={"eval_every": 50, **EVAL, "sample_steps": 10})  # fmt: skip
    mean = {(r.adapter, r.metric): r.mean for r in result.scores.rows}
    assert mean[(TOKEN, "fidelity")] >= mean[(None, "fidelity")] + 0.2, mean
    assert mean[(None, "leak")] == 0.0 and mean[(TOKEN, "leak")] <= 0.2, mean
    assert mean[(TOKEN, "prompt")] >= 0.5 * mean[(None, "prompt")] > 0, mean  # the green square stays green
    state = json.loads((tmp_path / "demo" / "run" / "run.json").read_text())["evaluation"]
    fidelity = {int(step): next(r["mean"] for r in rows if r["metric"] == "fidelity" and (r["adapter"] is None) ==
                                (step == "0")) for step, rows in state["steps"].items()}  # fmt: skip
    assert sorted(fidelity) == [0, 50, 100]
    assert state["best_step"] > 0 and state["best"] == f"step-{state['best_step']:06d}"
    assert fidelity[state["best_step"]] == max(fidelity.values()) >= fidelity[0] + 0.2, fidelity
    assert (tmp_path / "demo" / "run" / "checkpoints" / state["best"] / "adapter.safetensors").is_file()
