"""Shared set-up of the web tests: a registry with a few adapters and previews, an app over it, a job waiter."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from lorastack.registry import Registry
from lorastack.registry.metadata import set_metadata
from lorastack.registry.previews import add_preview
from lorastack.testing.registry import small_adapter

HEADERS = {"X-Lorastack": "1"}


def png(colour=(200, 30, 30), size=(32, 32)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def fill_library(root: Path, files: Path) -> Registry:
    """me/red (2 versions, a preview, lineage Pony, tag 'cute'), me/blue (trigger 'bluish'), other/green."""
    files.mkdir(parents=True, exist_ok=True)
    registry = Registry(root)
    registry.import_file(small_adapter(files / "red1.safetensors", seed=1), "me/red")
    registry.import_file(small_adapter(files / "red2.safetensors", seed=2), "me/red", "v2")
    registry.import_file(small_adapter(files / "blue.safetensors", seed=3, trigger="bluish"), "me/blue")
    registry.import_file(small_adapter(files / "green.safetensors", seed=4), "other/green")
    add_preview(registry, "me/red@2", png(), "user")
    set_metadata(registry, "me/red@2", {"lineage": "Pony", "tags": ["cute"], "notes": "a red one"}, "user")
    return registry


def wait(client, job: dict, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        record = client.get(f"/api/jobs/{job['id']}").json()
        if record["state"] not in ("queued", "running"):
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.05)
