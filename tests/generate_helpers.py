"""Helpers of the input and output-path tests: load_base that must not run (or stops), one-line checks, images."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from cli_helpers import run_cli
from PIL import Image

import lorastack.core.base
import lorastack.core.reproduce
from lorastack.core.errors import LorastackError


class Loaded(LorastackError):
    """Raised by the patched load_base: every check before the model load passed."""


def patch_load_base(monkeypatch, replacement) -> None:
    # the CLI, the demo and train import it when they run; reproduce.py holds its own reference
    for module in (lorastack.core.base, lorastack.core.reproduce):
        monkeypatch.setattr(module, "load_base", replacement)


@pytest.fixture
def no_load(monkeypatch):
    """load_base fails the test: the command must fail before any model loads."""

    def load_base(*args, **kwargs):
        raise AssertionError(f"load_base({args[0] if args else ''!s}) was called: the check came too late")

    patch_load_base(monkeypatch, load_base)


@pytest.fixture
def stop_at_load(monkeypatch):
    """load_base stops the command with a recognisable error: every earlier check passed."""

    def load_base(*args, **kwargs):
        raise Loaded("stopped at load_base")

    patch_load_base(monkeypatch, load_base)


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("Usage:", "Try "))]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def tiny_png(path: Path, size=(64, 64)) -> Path:
    Image.new("RGB", size, "white").save(path)
    return path


def bomb_png(path: Path, side: int = 100_000) -> Path:
    """A few bytes that claim ``side``×``side`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def generate(tmp_path, *extra, prompt="a cat"):
    return run_cli("generate", prompt, "--base", tmp_path / "base", "--steps", "2", "-o", tmp_path / "out", *extra)


@pytest.fixture
def data(tmp_path):
    """Two toy training images with captions."""
    from lorastack import toy

    return toy.write_dataset(tmp_path / "data", 2)
