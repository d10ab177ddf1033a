"""The README's commands and examples run as written."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
INSTALL = re.compile(
    r"^python3 -m venv \.venv && \. \.venv/bin/activate && pip install torch==2\.13\.0 (.+?)(?: && |$)"
)


def readme_block(name: str) -> str:
    match = re.search(rf"<!-- readme-test: {name} -->\n```bash\n(.+?)\n```", README, re.S)
    assert match, f"README has no {name} block"
    return match.group(1).strip()


def fenced(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.+?)\n```", README, re.S)


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "LORASTACK_HOME": str(cwd / ".lorastack-home"),  # the examples' own registry
    }
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


def test_install_steps_pin_the_cpu_torch_first():
    for name in ("main-job", "tests"):
        assert INSTALL.match(readme_block(name)), name


def test_ci_runs_exactly_the_readme_test_command():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_block("tests") + " || exit 1" in lines


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    """Run the README's first command in a shell, minus the install steps this environment has already done."""
    cwd = tmp_path_factory.mktemp("readme")
    command = INSTALL.sub("", readme_block("main-job"), count=1)
    assert command.startswith("lorastack demo")
    result = run(command, cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    return cwd, result


def toy_table(stdout: str) -> dict[str, dict[str, float]]:
    """The toy evaluator's table the demo prints: row (``base``, the adapter) → metric → mean."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ADAPTER"))
    header = re.split(r"\s{2,}", lines[start])
    assert header[:2] == ["ADAPTER", "WEIGHT"], header
    metrics = [h.split()[0] for h in header[2:]]  # "toy.fidelity ↑" → "toy.fidelity"
    table = {}
    for line in lines[start + 1 :]:
        if not line or line.startswith("recommended") or not re.match(r"^\S+\s{2,}[\d.]+\s", line):
            break
        name = line.split()[0]
        means = re.findall(r"([\d.]+) ±[\d.]+ \(n=\d+\)", line)
        assert len(means) == len(metrics), line  # every metric has a value for the base and the adapter
        table[name] = dict(zip(metrics, map(float, means)))
    return table


@pytest.mark.slow  # the demo trains 300 steps: minutes on 2 cores (.ci/run runs it)
def test_main_job(main_job):
    """The demo teaches the toy base the new concept: by the toy evaluator's table it prints, the adapter's images of
    the token prompt are clearly closer to the training stars than the base's, and on a prompt without the token it
    leaks little (prior preservation keeps the base's green square)."""
    cwd, result = main_job
    assert "toy evaluator on 'a aawxbc on a white background'" in result.stdout
    table = toy_table(result.stdout)
    assert set(table) == {"base", "aawxbc"} and set(table["base"]) == {"toy.fidelity", "toy.leak", "toy.prompt"}
    base, adapter = table["base"], table["aawxbc"]
    assert adapter["toy.fidelity"] >= base["toy.fidelity"] + 0.3, table  # the stars' yellow, where the base has none
    assert base["toy.leak"] == 0.0 and adapter["toy.leak"] <= 0.15, table  # the base's own images: no change
    assert adapter["toy.prompt"] >= 0.5 * base["toy.prompt"] > 0, table  # the green square stays mostly green
    assert (cwd / "lorastack-demo" / "demo-grid.png").exists()
    assert "demo/aawxbc@1" in result.stdout


def run_in_process(line: str, cwd: Path, monkeypatch) -> tuple[int, str]:
    """A documented command through the same entry point its console script uses, without a new interpreter."""
    from cli_helpers import run_cli

    from lorastack.testing.__main__ import main as testing_main

    argv = shlex.split(line)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("LORASTACK_HOME", str(cwd / ".lorastack-home"))
    if argv[0] == "lorastack":
        code, out, err = run_cli(*argv[1:])
        return code, out + err
    assert argv[:3] == ["python", "-m", "lorastack.testing"], line
    try:
        testing_main(argv[3:], standalone_mode=False)
    except SystemExit as e:
        return int(e.code or 0), ""
    return 0, ""


@pytest.mark.slow  # after the demo, in its folder
def test_every_example_block_runs(main_job, monkeypatch):
    """Each bash block (but the install ones) and each python block, in order, where the quickstart ran."""
    cwd, _ = main_job
    installs = {readme_block("main-job"), readme_block("tests")}
    ran = 0
    for lang, block in re.findall(r"```(bash|python)\n(.+?)\n```", README, re.S):
        if block.strip() in installs:
            continue
        if (cwd / "demo" / "style-kohya.safetensors").exists() and not (cwd / "civitai.safetensors").exists():
            # the file examples name a user's own files; give them the ones the setup block made
            shutil.copy(cwd / "demo" / "style.safetensors", cwd / "style.safetensors")
            shutil.copy(cwd / "demo" / "style-kohya.safetensors", cwd / "civitai.safetensors")
        if lang == "bash":
            for line in block.splitlines():
                command = line.split("#")[0].strip()
                code, output = run_in_process(command, cwd, monkeypatch)
                assert code == 0, f"{command}: {output[-2000:]}"
        else:
            monkeypatch.chdir(cwd)
            monkeypatch.setenv("LORASTACK_HOME", str(cwd / ".lorastack-home"))
            exec(compile(block, "README.md", "exec"), {})
        ran += 1
    assert ran >= 5
    assert (cwd / "style-kohya.safetensors").exists() and (cwd / "demo" / "out" / "00000-1-compare.png").exists()
    assert (cwd / "demo" / "star" / "00000-0-compare.png").exists()
    star_changes_the_pictures()


def star_changes_the_pictures() -> None:
    """The README's 20-step training makes an adapter that visibly changes the token prompt's pictures: yellow
    (the stars' colour) goes from almost none to a clear share on the same seeds."""
    import torch

    from lorastack import toy
    from lorastack.core import AdapterStack, load_base
    from lorastack.core.sources import resolve_adapter

    pipe = load_base("toy")
    pipe.set_progress_bar_config(disable=True)
    stack = AdapterStack(pipe)
    stack.load("star", resolve_adapter("me/star")[0])  # from the examples' registry (LORASTACK_HOME)
    shares = []
    for active in ({}, {"star": 1.0}):
        with stack.activated(active):
            seeds = [torch.Generator().manual_seed(s) for s in range(4)]
            images = pipe(["a photo of aawxbc"] * 4, num_inference_steps=20, height=toy.SIZE, width=toy.SIZE,
                          guidance_scale=1.5, generator=seeds).images  # fmt: skip
        shares.append(toy.concept_score(images, "yellow"))
    assert shares[1] >= shares[0] + 0.05, shares
