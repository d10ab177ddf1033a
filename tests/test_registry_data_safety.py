"""The registry never loses or corrupts an adapter: crashes mid-remove, damaged stored blobs, sources rewritten
mid-import, outputs that are not regular files, file modes, ``rm REF --all``, version numbers never reused, and gc
and reads against an import in flight.

One test per way the registry was found to break; each fails without its fix.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import run_cli
from registry_helpers import listed_and_loadable

from lorastack.adapters import OutputError
from lorastack.registry import ConflictError, Registry
from lorastack.testing.registry import small_adapter


@pytest.fixture
def files(tmp_path):
    return [small_adapter(tmp_path / f"a{i}.safetensors", seed=i, trigger=f"tok{i}") for i in range(4)]


# --- data loss and corruption -----------------------------------------------------------------------------------


def test_rm_deletes_blobs_only_after_its_commit(registry, files, monkeypatch):
    """A crash right after a blob is deleted must not leave the version listed without it."""
    registry.import_file(files[0], "style")
    registry.import_file(files[1], "style")
    blob = registry.adapter_path("style@2")[1]
    real_unlink = Path.unlink

    def unlink_then_die(self, *args, **kwargs):
        real_unlink(self, *args, **kwargs)
        if self == blob:
            raise KeyboardInterrupt  # the process stops right after the unlink (as a kill would)

    monkeypatch.setattr(Path, "unlink", unlink_then_die)
    with pytest.raises(KeyboardInterrupt):
        registry.remove("style@2")
    monkeypatch.undo()
    reopened = Registry(registry.root)
    assert listed_and_loadable(reopened) == ["style@1"] and reopened.verify().clean


def test_a_damaged_stored_blob_is_replaced_not_shared(registry, files, tmp_path):
    first = registry.import_file(files[0], "style").version
    blob = registry.adapter_path(first.ref)[1]
    damaged = bytearray(blob.read_bytes())
    damaged[-3] ^= 0xFF  # same size, other bytes
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(damaged))
    again = registry.import_file(files[0], "copy")  # the good bytes again, under another name
    assert again.version.files[0].sha256 == first.files[0].sha256
    assert registry.adapter_path("copy")[1].read_bytes() == files[0].read_bytes()  # repaired, not reused
    assert registry.verify().clean and registry.adapter_path("style")


def test_a_source_rewritten_during_import_is_stored_as_parsed(registry, files, monkeypatch):
    """What is recorded (rank, trigger words, hashes) describes exactly the bytes stored."""
    import lorastack.adapters as adapters

    source = files[0].with_name("moving.safetensors")
    source.write_bytes(files[0].read_bytes())
    real_read = adapters.read_adapter

    def read_then_rewrite(path, *args, **kwargs):
        adapter = real_read(path, *args, **kwargs)
        source.write_bytes(
            small_adapter(source.with_name("other.safetensors"), seed=9, rank=4, trigger="x").read_bytes()
        )
        return adapter

    monkeypatch.setattr(adapters, "read_adapter", read_then_rewrite)
    version = registry.import_file(source, "moving").version
    monkeypatch.undo()
    blob = registry.adapter_path("moving")[1]
    stored = adapters.read_adapter(blob, tensors=False)
    assert (version.rank, version.trigger_words) == (stored.rank, stored.metadata.trigger_words)
    assert version.files[0].sha256 == adapters.file_sha256(blob)


def test_outputs_replace_only_regular_files(registry, files, tmp_path):
    registry.import_file(files[0], "style")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    to_device = tmp_path / "null-link"
    to_device.symlink_to(os.devnull)
    for target, kind in (
        (fifo, r"a FIFO \(named pipe\)"),
        (to_device, r"a character device \(through a symbolic link\)"),
    ):
        with pytest.raises(OutputError, match=f"is {kind}; lorastack only writes or replaces regular files"):
            registry.export("style", target, overwrite=True)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and os.path.islink(to_device)
    code, _, err = run_cli("convert", files[0], "--to", "diffusers", "-o", fifo, "--force")
    assert code == 1 and "FIFO" in err and "Traceback" not in err
    # a link to a regular file is written through: the link stays, its target gets the bytes
    real = tmp_path / "real.safetensors"
    real.write_bytes(b"old")
    link = tmp_path / "link.safetensors"
    link.symlink_to(real)
    registry.export("style", link, overwrite=True)
    assert link.is_symlink() and real.read_bytes() == files[0].read_bytes()


def test_written_files_get_the_usual_mode(registry, files, tmp_path):
    registry.import_file(files[0], "style")
    umask = os.umask(0o022)
    try:
        fresh = registry.export("style", tmp_path / "new.safetensors")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644  # not mkstemp's 0600
        kept = tmp_path / "kept.safetensors"
        kept.write_bytes(b"x")
        kept.chmod(0o640)
        registry.export("style", kept, overwrite=True)
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640  # a replaced file keeps its mode
    finally:
        os.umask(umask)


def test_rm_with_a_reference_and_all_is_refused(registry, files):
    for f in files[:2]:
        registry.import_file(f, "style")
    registry.tag("style@1", "best")
    for ref in ("style:best", "style@1"):
        with pytest.raises(ConflictError, match="--all-versions removes every version of style"):
            registry.remove(ref, all_versions=True)
    assert listed_and_loadable(registry) == ["style@1", "style@2"]
    code, _, err = run_cli("rm", "style:best", "--all")
    assert code == 1 and "write lorastack rm style --all-versions" in err


def test_version_numbers_are_never_reused(registry, files):
    for f in files[:2]:
        registry.import_file(f, "style")
    registry.remove("style@2")
    assert registry.import_file(files[2], "style").version.number == 3  # not @2 with other bytes
    registry.remove("style", all_versions=True)
    assert registry.import_file(files[3], "STYLE").version.number == 4  # the name remembers its numbers
    assert registry.resolve("style").number == 4


def test_gc_never_sweeps_an_import_in_flight(registry, files):
    registry.import_file(files[0], "style")
    staged, release = threading.Event(), threading.Event()
    result = {}

    def importer():
        mine = Registry(registry.root)  # SQLite connections belong to one thread
        real_commit = mine.blobs.commit

        def slow_commit(blob):
            staged.set()  # the import's scratch folder exists, its blob is not stored yet
            release.wait(10)
            return real_commit(blob)

        mine.blobs.commit = slow_commit
        result["import"] = mine.import_file(files[1], "style")

    def sweeper():
        result["gc"] = Registry(registry.root).gc(grace=0)

    threads = [threading.Thread(target=importer), threading.Thread(target=sweeper)]
    threads[0].start()
    assert staged.wait(10)
    threads[1].start()
    time.sleep(0.3)
    assert threads[1].is_alive()  # gc waits for the import instead of deleting its scratch folder
    release.set()
    for thread in threads:
        thread.join(10)
    assert result["import"].version.number == 2 and listed_and_loadable(registry) == ["style@1", "style@2"]
    assert registry.verify().clean and not registry.verify().reclaimable


def test_reads_never_wait_for_an_import_in_flight(registry, files):
    registry.import_file(files[0], "style")
    staged, release = threading.Event(), threading.Event()
    result = {}

    def importer():
        mine = Registry(registry.root)
        real_commit = mine.blobs.commit

        def slow_commit(blob):
            staged.set()
            release.wait(20)
            return real_commit(blob)

        mine.blobs.commit = slow_commit
        result["import"] = mine.import_file(files[1], "other")

    def reader():
        mine = Registry(registry.root)
        result["list"] = [row["ref"] for row in mine.list()]
        result["tag"] = mine.tag("style@1", "best").ref

    background = threading.Thread(target=importer)
    background.start()
    assert staged.wait(10)
    reading = threading.Thread(target=reader)
    reading.start()
    reading.join(10)
    finished = not reading.is_alive()
    release.set()
    background.join(10)
    reading.join(10)
    assert finished, "list and tag waited for an import in flight"
    assert result["list"] == ["style@1"] and result["tag"] == "style@1" and result["import"].created
