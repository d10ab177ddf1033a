"""The README's serve command starts the server on the toy base, and it answers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_serve_command_starts_the_server(tmp_path):
    block = re.search(r"<!-- readme-test: serve -->\n```console\n(.+?)\n```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README has no serve block"
    command = block.group(1).strip()
    assert command == "lorastack serve --base toy"
    argv = [sys.executable, "-m", "lorastack.cli.main", *command.split()[1:], "--port", "0", "--json"]
    env = {**os.environ, "LORASTACK_HOME": str(tmp_path / "home")}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        assert line, process.stderr.read()[-2000:]
        url = json.loads(line)["url"]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "api/bases", timeout=30) as response:
            assert json.load(response)["bases"] == ["toy"]
        with urllib.request.urlopen(url, timeout=30) as response:
            assert b"/static/app.js" in response.read()
    finally:
        process.terminate()
        process.wait(timeout=30)
