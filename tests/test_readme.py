"""The README's commands and examples run as written."""

import os
import re
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
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_install_steps_pin_the_cpu_torch_first():
    for name in ("main-job", "tests"):
        assert INSTALL.match(readme_block(name)), name


def test_ci_runs_exactly_the_readme_test_command():
    assert readme_block("tests") in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    """Run the README's first command, minus the install steps this environment has already done."""
    cwd = tmp_path_factory.mktemp("readme")
    command = INSTALL.sub("", readme_block("main-job"), count=1)
    assert command.startswith("python -m lorastack.testing tiny-base")
    result = run(command, cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    # the same command must run again on the folder it made
    again = run(command, cwd)
    assert again.returncode == 0, again.stderr[-2000:]
    return cwd, result


def test_main_job(main_job):
    cwd, result = main_job
    assert "format        diffusers" in result.stdout and "family        SD 1.x" in result.stdout
    assert "trigger words aawxbc style" in result.stdout and "wrote demo/style-kohya.safetensors" in result.stdout
    assert (cwd / "demo" / "tiny-sd1" / "model_index.json").exists()


def test_every_example_block_runs(main_job):
    """Each bash block (but the install ones) and each python block, in order, where the quickstart ran."""
    cwd, _ = main_job
    shutil.copy(cwd / "demo" / "style.safetensors", cwd / "style.safetensors")
    shutil.copy(cwd / "demo" / "style-kohya.safetensors", cwd / "civitai.safetensors")
    installs = {readme_block("main-job"), readme_block("tests")}
    ran = 0
    for lang, block in re.findall(r"```(bash|python)\n(.+?)\n```", README, re.S):
        if block.strip() in installs:
            continue
        if lang == "bash":
            for line in block.splitlines():
                command = line.split("#")[0].strip()
                result = run(command, cwd)
                assert result.returncode == 0, f"{command}: {result.stderr[-2000:]}"
        else:
            env = {**os.environ, "LORASTACK_HOME": str(cwd / ".lorastack-home")}
            result = subprocess.run([sys.executable, "-c", block], cwd=cwd, env=env, capture_output=True, text=True)
            assert result.returncode == 0, result.stderr[-2000:]
        ran += 1
    assert ran >= 4
    assert (cwd / "style-kohya.safetensors").exists() and (cwd / "demo" / "out" / "00000-1-compare.png").exists()
