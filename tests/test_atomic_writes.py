"""The one atomic write every result, cache and recipe goes through (``lorastack.adapters.outputs.atomic_path``)."""

import os
import stat
import subprocess
import sys

import pytest
from PIL import Image

from lorastack.adapters.errors import OutputError
from lorastack.adapters.outputs import atomic_path, atomic_write_bytes


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or ".tmp." in p.name)


def test_a_failed_block_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("the writer failed")
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_a_process_killed_inside_the_block_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    code = (
        "import os, signal, sys\n"
        "from lorastack.adapters.outputs import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'new but never renamed')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True)
    assert result.returncode == -9
    assert target.read_bytes() == b"old"


def test_the_temporary_keeps_the_suffix_so_writers_choosing_by_suffix_work(tmp_path):
    target = tmp_path / "grid.png"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        Image.new("RGB", (4, 4), "red").save(tmp)  # PIL picks the format from the name
    assert Image.open(target).format == "PNG"
    assert leftovers(tmp_path) == []


def test_the_replaced_file_keeps_its_mode_and_a_new_one_follows_the_umask(tmp_path):
    kept = tmp_path / "kept.bin"
    kept.write_bytes(b"old")
    kept.chmod(0o640)
    atomic_write_bytes(kept, b"new")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and kept.read_bytes() == b"new"
    fresh = tmp_path / "fresh.bin"
    atomic_write_bytes(fresh, b"x", durable=False)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask


def test_a_link_is_written_through_and_a_fifo_is_refused(tmp_path):
    real = tmp_path / "real.bin"
    real.write_bytes(b"old")
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    atomic_write_bytes(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="FIFO"):
        atomic_write_bytes(fifo, b"x")
    assert stat.S_ISFIFO(fifo.stat().st_mode)
