"""docs/arithmetic.md's example runs as written, command by command, and each command's result is what the page
says it is; the printed summary has the page's form (the five worst layers; every layer with -v)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from arith_helpers import lora_layers, save, targets
from cli_helpers import run_cli

from lorastack.testing.__main__ import main as testing_main

DOC = (Path(__file__).resolve().parents[1] / "docs" / "arithmetic.md").read_text()


def example() -> list[str]:
    match = re.search(r"<!-- docs-test: arithmetic -->\n```bash\n(.+?)\n```", DOC, re.S)
    assert match, "docs/arithmetic.md has no tested example"
    return [line for line in match.group(1).splitlines() if line.strip()]


def test_every_command_has_a_section():
    for command in ("merge", "resize", "extract", "bake"):
        assert f"## {command}\n" in DOC and any(f"lorastack {command} " in line for line in example())


def shown_summary() -> list[str]:
    match = re.search(r"```text\n(.+?)\n```", DOC, re.S)
    assert match, "docs/arithmetic.md shows no summary"
    return match.group(1).splitlines()


def test_the_summary_is_what_the_page_shows(tmp_path, tiny_sd1_pipe):
    weights = targets(tiny_sd1_pipe, limit=12, conv=False)
    src = save(lora_layers(weights, rank=6, seed=3), tmp_path / "a.safetensors")
    args = ["resize", src, "-o", tmp_path / "r.safetensors", "--dynamic", "sv_fro", "--target", "0.9"]
    code, out, err = run_cli(*args)
    assert code == 0, err[-1500:]
    lines = out.rstrip().splitlines()
    page = shown_summary()
    assert len(lines) == 4 + 5 and page[-2] == "  …"  # retention, totals, heading, the 5 worst, wrote
    forms = [r"Average Frobenius norm retention: [\d.]+% \| std: [\d.]+",
             r"resize: \d+ layers, ranks [\d, ]+, relative error \S+ \(worst layer \S+\)",
             r"worst 5 of \d+ layers by relative error \(-v: every layer\):", r"wrote .+ \(\w+ format\)"]  # fmt: skip
    for form, got, shown in zip(forms, lines[:3] + lines[-1:], page[:3] + page[-1:]):
        assert re.fullmatch(form, got) and re.fullmatch(form, shown), (form, got, shown)
    worst = lines[3:8]
    assert all(line.startswith("  ") and "fro retained:" in line for line in worst)
    errors = [float(line.rsplit("relative error: ", 1)[1]) for line in worst]
    assert errors == sorted(errors, reverse=True)
    code, json_out, _ = run_cli(*args[:3], tmp_path / "j.safetensors", *args[4:], "--json")
    report = json.loads(json_out)  # --json: the whole report, nothing else
    assert max(layer["relative_error"] for layer in report["layers"]) == pytest.approx(errors[0], rel=1e-2)
    assert len(report["layers"]) == len(weights)
    code, verbose, _ = run_cli(*args[:3], tmp_path / "v.safetensors", *args[4:], "-v")
    per_layer = [line for line in verbose.splitlines() if not line.startswith(" ") and "fro retained:" in line]
    assert code == 0 and {line.split()[0] for line in per_layer} == set(weights)
    assert "worst 5" not in verbose


@pytest.mark.slow
def test_the_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORASTACK_HOME", str(tmp_path / "home"))
    reports = {}
    for line in example():
        argv = shlex.split(line)
        if argv[0] == "python":
            testing_main(argv[3:], standalone_mode=False)
            continue
        code, out, err = run_cli(*argv[1:])
        assert code == 0, (line, out[-1500:], err[-1500:])
        if "--json" in argv:
            reports[argv[argv.index("-o") + 1]] = json.loads(out)
        else:
            assert out.rstrip().splitlines()[-1].startswith("wrote "), (line, out[-500:])
    assert reports["style-dynamic.safetensors"]["summary"]["average_fro_retained"] >= 0.9 - 1e-6
    assert reports["merged-ties.safetensors"]["settings"]["distance_to_weighted_sum"] > 0
    assert (tmp_path / "baked" / "model_index.json").is_file()
    assert (tmp_path / "stack.safetensors").is_file() and (tmp_path / "extracted.safetensors").is_file()
