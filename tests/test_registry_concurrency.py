"""Many processes at once, and processes killed at random points: the registry stays whole."""

import multiprocessing
import os
import random
import signal
import sqlite3
import time

import pytest
import registry_workers

from lorastack.registry import Registry
from lorastack.testing.registry import small_adapter


@pytest.fixture(scope="module")
def context():
    """Forked from a server that has lorastack imported already, so workers start in milliseconds."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["lorastack.registry", "registry_workers"])
    return ctx


def test_four_processes_importing_and_tagging_at_once(tmp_path, context):
    root = str(tmp_path / "reg")
    files = {w: [str(small_adapter(tmp_path / f"w{w}-{i}.safetensors", seed=w * 100 + i)) for i in range(50)]
             for w in range(4)}  # fmt: skip
    queue = context.Queue()
    workers = [
        context.Process(
            target=registry_workers.reporting, args=(registry_workers.import_and_tag, queue, root, files[w], w)
        )
        for w in range(4)
    ]
    for p in workers:
        p.start()
    outcomes = [queue.get(timeout=600) for _ in workers]
    for p in workers:
        p.join(timeout=60)
    assert outcomes == [None] * 4, "\n".join(o for o in outcomes if o)
    registry = Registry(root)
    for i in range(50):
        versions = registry.versions(f"a{i:02d}")
        assert sorted(v.number for v in versions) == [1, 2, 3, 4]  # each version exactly once
        by_tag = {tag: v for v in versions for tag in v.tags if tag.startswith("w")}
        assert sorted(by_tag) == ["w0", "w1", "w2", "w3"]
        for w, version in by_tag.items():  # each worker's tag names the file that worker imported
            assert version.provenance["file"].endswith(f"{w}-{i}.safetensors")
    report = registry.verify()
    assert report.clean and report.checked == 200


def _consistent(root):
    """No half-made version: every version has its adapter file, and every file's blob is present and whole."""
    conn = sqlite3.connect(f"file:{root}/index.sqlite?mode=ro", uri=True)
    orphans = conn.execute(
        "SELECT COUNT(*) FROM versions v WHERE NOT EXISTS (SELECT 1 FROM files f WHERE f.version_id = v.id)"
    ).fetchone()[0]
    dangling = conn.execute("SELECT COUNT(*) FROM tags t LEFT JOIN versions v ON v.id = t.version_id "
                            "WHERE v.id IS NULL").fetchone()[0]  # fmt: skip
    conn.close()
    return orphans == 0 and dangling == 0


@pytest.mark.parametrize("trials", [20, pytest.param(60, marks=pytest.mark.slow)])
def test_processes_killed_at_random_points_leave_a_whole_registry(tmp_path, context, trials):
    root = tmp_path / "reg"
    files = [str(small_adapter(tmp_path / f"f{i}.safetensors", seed=i)) for i in range(6)]
    Registry(root).import_file(files[0], "c0")  # the index exists before the first kill
    rng = random.Random(0)
    killed = 0
    for trial in range(trials):
        p = context.Process(target=registry_workers.churn, args=(str(root), files, trial))
        p.start()
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        killed += p.exitcode == -signal.SIGKILL
        assert _consistent(root), f"trial {trial}"
        registry = Registry(root)
        report = registry.verify()
        assert not report.missing and not report.corrupt, f"trial {trial}: {report}"
        for row in registry.list(all_versions=True):  # every visible version loads
            registry.adapter_path(row["ref"])
        registry.close()
    assert killed >= trials - 2  # the workers really were killed mid-run, not finished
    registry = Registry(root)
    registry.gc(grace=0)  # leftovers of the kills: temp files and blobs no version kept
    assert registry.verify().clean
