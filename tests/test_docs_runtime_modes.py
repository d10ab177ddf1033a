"""docs/runtime.md's apply-mode example runs as written: bypass on the toy base, compiled once, rescaled without a
recompilation, the same file read once through the adapter cache."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOC = (Path(__file__).resolve().parents[1] / "docs" / "runtime.md").read_text()


@pytest.mark.slow  # dynamo traces the toy UNet: about 20 s alone, a minute on a busy 2-core machine
def test_the_apply_mode_example_runs(monkeypatch, tmp_path):
    import torch

    match = re.search(r"<!-- docs-test: runtime-modes -->\n```python\n(.+?)\n```", DOC, re.S)
    assert match, "docs/runtime.md has no tested apply-mode example"
    monkeypatch.setenv("LORASTACK_HOME", str(tmp_path / "home"))
    torch._dynamo.reset()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(match.group(1), "docs/runtime.md", "exec"), {})  # its own asserts check what the page says
    count, rest = out.getvalue().split(" ", 1)
    assert int(count) > 0 and rest.strip() == "layers bypassed"


def test_the_backend_table_names_every_quantize_choice():
    from lorastack.core.quantized import QUANTIZATIONS

    table = DOC[DOC.index("**Quantized bases**") : DOC.index("**Compiling.**")]
    assert all(f"`{q}`" in table or f"`--quantize {q}`" in table for q in QUANTIZATIONS)
