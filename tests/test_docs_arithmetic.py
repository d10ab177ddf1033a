"""docs/arithmetic.md's example runs as written, command by command, and each command's result is what the page
says it is."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
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
