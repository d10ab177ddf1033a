"""Stored evaluation scores: a kill while they are written leaves the old set or the new one, whole; the Hub model
card's evaluation section; the web app's adapter API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from lorastack.core.evaluation import ScoreRow
from lorastack.registry import Registry
from lorastack.registry.scores import get_scores, record_scores
from lorastack.testing.registry import small_adapter

#: Run in a child: store a new set of three rows (it dies at the crash point named in the environment).
CHILD = """
import sys
from lorastack.core.evaluation import ScoreRow
from lorastack.registry import Registry
from lorastack.registry.scores import record_scores
rows = [ScoreRow(None, 0.0, "toy", "fidelity", True, 0.1, 0.0, 4)]
rows += [ScoreRow(sys.argv[2], w, "toy", "fidelity", True, 0.5 + w / 10, 0.02, 4) for w in (0.5, 1.0)]
record_scores(Registry(sys.argv[1]), sys.argv[2], rows, 1.0, {"prompts": ["new"]}, source="eval")
"""


def table(ref: str, value: float) -> list[ScoreRow]:
    return [
        ScoreRow(None, 0.0, "clip", "clip_t", True, 0.2, 0.01, 2),
        ScoreRow(ref, 1.0, "clip", "clip_t", True, value, 0.03, 2),
        ScoreRow(ref, 1.0, "leakage", "pixel", False, 0.04, 0.01, 2),
    ]


def test_scores_killed_before_their_commit_are_the_old_set_whole(tmp_path):
    root = tmp_path / "registry"
    registry = Registry(root)
    ref = registry.import_file(small_adapter(tmp_path / "a.safetensors"), "me/a").version.ref
    record_scores(registry, ref, table(ref, 0.3), 1.0, {"prompts": ["old"]}, source="training")
    registry.close()
    env = {**os.environ, "LORASTACK_CRASH_AT": "registry.scores.before-commit"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(root), ref], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    registry = Registry(root)
    stored = get_scores(registry, ref)
    # the old set, every row of it, with its own protocol and source: none of the new rows, none of the old lost
    assert stored.protocol == {"prompts": ["old"]} and stored.source == "training"
    assert [(r["evaluator"], r["metric"], r["weight"], r["mean"]) for r in stored.rows] == [
        ("clip", "clip_t", 0.0, 0.2), ("clip", "clip_t", 1.0, 0.3), ("leakage", "pixel", 1.0, 0.04)]  # fmt: skip
    assert registry.verify().clean
    # the same write, not killed, replaces the whole set
    done = subprocess.run([sys.executable, "-c", CHILD, str(root), ref], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    stored = get_scores(Registry(root), ref)
    assert stored.protocol == {"prompts": ["new"]} and [r["weight"] for r in stored.rows] == [0.0, 0.5, 1.0]


def test_the_model_card_has_the_evaluation_section(tmp_path):
    from lorastack.registry.cards import model_card

    registry = Registry(tmp_path / "registry")
    ref = registry.import_file(small_adapter(tmp_path / "a.safetensors", trigger="sks"), "me/a").version.ref
    version = registry.resolve(ref)
    files = ["pytorch_lora_weights.safetensors"]
    assert "## Evaluation" not in model_card(version, "me/a", files)
    assert "## Evaluation" not in model_card(version, "me/a", files, scores=None)
    record_scores(registry, ref, table(ref, 0.31), 1.0, {"prompts": ["a sks dog", "a cat"], "seeds": [0, 1, 2]})
    card = model_card(version, "me/a", files, scores=get_scores(registry, ref))
    section = card[card.index("## Evaluation") : card.index("## Use it with diffusers")]
    lines = section.splitlines()
    assert "| Metric | base | weight 1 |" in lines
    assert "| clip.clip_t (higher is better) | 0.200 ± 0.010 | 0.310 ± 0.030 |" in lines
    assert "| leakage.pixel (lower is better) |  | 0.040 ± 0.010 |" in lines  # no base row: an empty cell
    assert "Recommended weight: 1. Measured by lorastack (eval, 2 prompts x 3 seeds)." in lines
    record_scores(registry, ref, table(ref, 0.31), None)
    assert "Recommended weight: none." in model_card(version, "me/a", files, scores=get_scores(registry, ref))


def test_the_web_api_gives_an_adapters_scores(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from lorastack.web.app import create_app

    root = tmp_path / "registry"
    registry = Registry(root)
    refs = [registry.import_file(small_adapter(tmp_path / f"{n}.safetensors", seed=i), f"me/{n}").version.ref
            for i, n in enumerate("ab")]  # fmt: skip
    record_scores(registry, refs[0], table(refs[0], 0.34), 1.0, {"prompts": ["p"], "seeds": [0]})
    registry.close()
    with TestClient(create_app(root, default_base="toy", folders=[tmp_path])) as client:
        scores = client.get(f"/api/adapters/{refs[0]}").json()["scores"]
        assert client.get(f"/api/adapters/{refs[1]}").json()["scores"] is None  # never evaluated
    assert scores["ref"] == refs[0] and scores["recommended_weight"] == 1.0 and scores["source"] == "eval"
    assert scores["headline"] == {"clip.clip_t": 0.34, "leakage.pixel": 0.04}
    assert {(r["metric"], r["weight"], r["mean"]) for r in scores["results"]} == {
        ("clip_t", 0.0, 0.2), ("clip_t", 1.0, 0.34), ("pixel", 1.0, 0.04)}  # fmt: skip
    assert json.dumps(scores)  # plain JSON all the way down
