"""docs/evaluation.md's example runs as written, command by command, and gives what the page says: the files of
``-o``, the JSON's shape, weight 0 as the base; the page's evaluator table names the registered evaluators and their
metrics."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from cli_helpers import run_cli

DOC = (Path(__file__).resolve().parents[1] / "docs" / "evaluation.md").read_text()


def example() -> list[str]:
    match = re.search(r"<!-- docs-test: evaluation -->\n```bash\n(.+?)\n```", DOC, re.S)
    assert match, "docs/evaluation.md has no tested example"
    return [line for line in match.group(1).splitlines() if line.strip()]


def test_the_evaluator_table_is_the_registered_evaluators():
    from lorastack.plugins.manager import get_evaluator

    rows = re.findall(r"^\| `(\w+)` \| (.+?) \|", DOC, re.M)
    assert {name for name, _ in rows} == {"clip", "dino", "leakage", "toy"}
    for name, metrics in rows:
        documented = dict(re.findall(r"`(\w+)` ([↑↓])", metrics))
        evaluator = get_evaluator(name)
        assert documented == {m.name: "↑" if m.higher_is_better else "↓" for m in evaluator.metrics}, name


@pytest.mark.slow  # draws 32 toy images at 8 steps: minutes of a busy 2-core machine
def test_the_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORASTACK_HOME", str(tmp_path / "home"))
    lines = example()
    assert [shlex.split(line)[:2] for line in lines] == [["lorastack", "eval"]] * 2
    for line in lines:
        argv = shlex.split(line)
        code, out, err = run_cli(*argv[1:])
        assert code == 0, (line, out[-1500:], err[-1500:])
        if "--json" in argv:
            report = json.loads(out)
        else:
            folder = tmp_path / argv[argv.index("-o") + 1]
            saved = json.loads((folder / "scores.json").read_text())
            names = {Path(f).name for f in saved["files"]}
            assert {"scores.txt", "scores.json", "grid-00.png", "grid-01.png", "plot-toy.prompt.png",
                    "plot-toy.leak.png"} <= names and all(Path(f).is_file() for f in saved["files"])  # fmt: skip
            table = (folder / "scores.txt").read_text()
            assert table.startswith("ADAPTER") and "recommended weight for toy-style:" in table
            assert {(r["adapter"], r["weight"]) for r in saved["results"]} == {(None, 0.0), ("toy-style", 0.5),
                                                                              ("toy-style", 1.0)}  # fmt: skip
    # the page's JSON: one row per adapter, weight and metric, weight 0 the base (adapter null)
    shown = re.search(r"```json\n(.+?)\n```", DOC, re.S).group(1)
    assert set(re.findall(r'"(\w+)":', shown)) == set(report["results"][0]) | {"results", "recommended", "files"}
    assert {(r["adapter"], r["weight"]) for r in report["results"]} == {(None, 0.0), ("toy-style", 0.5),
                                                                       ("toy-style", 1.0)}  # fmt: skip
    assert all(r["n"] == 1 and r["evaluator"] == "toy" for r in report["results"])
    leak = {r["weight"]: r["mean"] for r in report["results"] if r["metric"] == "leak"}
    assert leak[0.0] == 0.0 and leak[1.0] > 0  # the base does not leak into itself; the outline style does
    assert set(report["recommended"]) == {"toy-style"}
