"""Kills at chosen points: each write path is stopped with SIGKILL at every one of its crash points in turn.

An operation is first run with ``LORASTACK_CRASH_TRACE`` to list the crash points it passes (a point reached twice
is two chances to die), then once per point on a fresh copy of the registry with ``LORASTACK_CRASH_AT``. After each
kill the registry must be whole (``verify`` clean, every listed version loads), show either the state before the
operation or the state after it (nothing in between), and be completed by running the operation again.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
from collections import Counter
from pathlib import Path

import pytest
import registry_workers
import torch

from lorastack.registry import Registry
from lorastack.testing.registry import small_adapter

KILLED = -signal.SIGKILL
#: Every kill of the last run of this module, for the figures in docs/reliability.md.
KILLS: Counter = Counter()


@pytest.fixture(scope="module")
def context():
    """Forked from a server that has lorastack imported already, so each killed run starts in milliseconds."""
    ctx = multiprocessing.get_context("forkserver")
    preload = ["lorastack.registry", "lorastack.adapters.reading", "lorastack.registry.hub", "huggingface_hub"]
    ctx.set_forkserver_preload([*preload, "peft", "lorastack.testing.hub_server", "registry_workers"])
    return ctx


@pytest.fixture(scope="module", autouse=True)
def report_kills():
    yield
    if KILLS:
        print(f"\ncrash points: {sum(KILLS.values())} kills at {len(KILLS)} points: {dict(sorted(KILLS.items()))}")


def run(context, env: dict, op: str, *args) -> int:
    process = context.Process(target=registry_workers.crashing, args=(env, op, *args))
    process.start()
    process.join(120)
    if process.exitcode is None:
        process.kill()
        pytest.fail(f"{op} hung")
    return process.exitcode


def state(root: Path) -> frozenset:
    """What a user sees: every version with its tags and bytes."""
    registry = Registry(root)
    try:
        return frozenset((row["ref"], tuple(row["tags"]), row["sha256"]) for row in registry.list(all_versions=True))
    finally:
        registry.close()


def assert_whole(root: Path) -> None:
    registry = Registry(root)
    report = registry.verify()
    assert report.clean, report
    for row in registry.list(all_versions=True):  # every listed version has its blob, whole
        registry.adapter_path(row["ref"])
    registry.gc(grace=0)
    assert not registry.verify().reclaimable  # what the kill left, gc swept
    registry.close()


def crash_everywhere(
    context, tmp_path: Path, template: Path, op: str, *args, again: bool = True, between: tuple = ()
) -> list[str]:
    """Kill ``op`` at each of its crash points on a copy of ``template``; check each outcome; the points.

    ``between``: states an operation of several atomic steps may be killed in (a pull of several versions).
    """
    trace = tmp_path / "trace.txt"
    reference = tmp_path / "reference"
    shutil.copytree(template, reference)
    before = state(reference)
    assert run(context, {"LORASTACK_CRASH_TRACE": str(trace)}, op, str(reference), *args) == 0
    after = state(reference)
    assert after != before or op == "gc", "the operation changed nothing: the test would prove nothing"
    seen: Counter = Counter()
    points = []
    for name in trace.read_text().split():
        seen[name] += 1
        points.append(f"{name}#{seen[name]}")
    assert points, f"{op} passed no crash point"
    for point in points:
        root = tmp_path / f"killed-{point.replace('#', '-')}"
        shutil.copytree(template, root)
        assert run(context, {"LORASTACK_CRASH_AT": point}, op, str(root), *args) == KILLED, point
        KILLS[point] += 1
        seen_state = state(root)
        assert seen_state in (before, after, *between), f"killed at {point}: a state between before and after"
        assert_whole(root)
        if again:  # the interrupted operation completes when run again
            assert run(context, {}, op, str(root), *args) == 0, point
            assert state(root) == after, f"killed at {point}, then run again"
            assert_whole(root)
        shutil.rmtree(root)
    return points


@pytest.fixture
def files(tmp_path):
    return [small_adapter(tmp_path / f"f{i}.safetensors", seed=i, trigger=f"tok{i}") for i in range(4)]


@pytest.fixture
def template(tmp_path, files):
    """A registry holding a@1 (tagged best), a@2 and b@1 (sharing a@1's bytes)."""
    root = tmp_path / "template"
    registry = Registry(root)
    registry.import_file(files[0], "a", "best")
    registry.import_file(files[1], "a")
    registry.import_file(files[0], "b")
    registry.close()
    return root


def test_import_killed_at_each_point(context, tmp_path, template, files):
    points = crash_everywhere(context, tmp_path, template, "import", str(files[2]), "a", "new")
    assert {p.split("#")[0] for p in points} >= {
        "registry.import.staged",
        "registry.blob.before-rename",
        "registry.blob.after-rename",
        "registry.import.before-commit",
        "registry.import.after-commit",
    }


@pytest.mark.slow
def test_pickle_import_killed_at_each_point(context, tmp_path, template):
    from safetensors.torch import load_file

    pickle = tmp_path / "p.pt"
    torch.save(load_file(str(small_adapter(tmp_path / "p.safetensors", seed=7))), pickle)
    crash_everywhere(context, tmp_path, template, "pickle_import", str(pickle), "p")


def test_removing_a_version_killed_at_each_point(context, tmp_path, template):
    points = crash_everywhere(context, tmp_path, template, "rm", "a@2", again=False)
    assert {p.split("#")[0] for p in points} >= {"registry.rm.before-commit", "registry.rm.after-commit"}
    assert "registry.rm.unlinked#1" in points  # a@2's blob was deleted, after the commit


@pytest.mark.slow
def test_removing_an_adapter_killed_at_each_point(context, tmp_path, template):
    crash_everywhere(context, tmp_path, template, "rm", "a", True, again=False)


def test_tagging_killed_at_each_point(context, tmp_path, template):
    crash_everywhere(context, tmp_path, template, "tag", "a@2", "best")


def test_gc_killed_at_each_point(context, tmp_path, template):
    registry = Registry(template)
    for i in range(3):  # orphans for gc to sweep
        orphan = registry.blobs.path(f"{i:02d}" * 32)
        orphan.parent.mkdir(parents=True, exist_ok=True)
        orphan.write_bytes(b"orphan")
    registry.close()
    points = crash_everywhere(context, tmp_path, template, "gc")
    assert points == [f"registry.gc.unlinked#{i}" for i in (1, 2, 3)]


def _hub_env() -> dict:
    keys = ("HF_ENDPOINT", "HF_HUB_DISABLE_XET", "HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "HF_TOKEN_PATH")
    return {key: os.environ[key] for key in keys if key in os.environ}


@pytest.fixture
def pushed(tmp_path, hub_server, files):
    """alice/fig on the Hub with versions v1 (tagged best) and v2, and a local registry holding another adapter."""
    from lorastack.registry.hub import push

    source = Registry(tmp_path / "source")
    for f in files[:2]:
        source.import_file(f, "me/fig")
    source.tag("me/fig@1", "best")
    push(source, "me/fig", "alice/fig", all_versions=True)
    local = tmp_path / "local-template"
    Registry(local).import_file(files[3], "unrelated")
    return local


def test_pull_killed_at_each_point(context, tmp_path, pushed):
    points = crash_everywhere(context, tmp_path, pushed, "pull", _hub_env(), "alice/fig")
    assert {p.split("#")[0] for p in points} >= {"hub.pull.downloaded", "registry.import.before-commit"}


@pytest.mark.slow
def test_pulling_every_version_killed_at_each_point(context, tmp_path, pushed):
    halfway = tmp_path / "halfway"
    shutil.copytree(pushed, halfway)
    assert run(context, {}, "pull", str(halfway), _hub_env(), "alice/fig@v1") == 0
    points = crash_everywhere(
        context, tmp_path, pushed, "pull", _hub_env(), "alice/fig", True, between=(state(halfway),)
    )
    assert "hub.pull.downloaded#2" in points  # both versions, each killable after its download


def test_push_killed_after_its_commit_pushes_again_without_a_false_conflict(context, tmp_path, hub_server, files):
    root = tmp_path / "local"
    registry = Registry(root)
    registry.import_file(files[0], "me/fig")
    registry.close()
    env = _hub_env()
    assert run(context, {}, "push", str(root), env, "me/fig", "alice/fig") == 0
    Registry(root).import_file(files[1], "me/fig")
    point = {"LORASTACK_CRASH_AT": "hub.push.committed"}
    assert run(context, point, "push", str(root), env, "me/fig", "alice/fig") == KILLED
    KILLS["hub.push.committed#1"] += 1
    assert "hub" not in Registry(root).resolve("me/fig@2").provenance  # the commit is on the Hub, not recorded
    assert run(context, {}, "push", str(root), env, "me/fig", "alice/fig") == 0  # no "branch moved" conflict
    hub = Registry(root).resolve("me/fig@2").provenance["hub"]
    repo = hub_server.repos["alice/fig"]
    assert repo.tags["v2"] == hub["commit"] and repo.branches["main"] == hub["commit"]


@pytest.mark.slow
def test_the_documented_example_runs(tmp_path):
    import re
    import subprocess
    import sys

    doc = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    block = re.search(r"<!-- reliability-example -->\n```bash\n(.+?)\n```", doc, re.S).group(1)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "LORASTACK_HOME": str(tmp_path / "home"),
    }
    done = subprocess.run(["bash", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "killed: 137" in done.stdout and "no adapters in the registry yet" in done.stdout
    assert done.stdout.count("\nclean") == 2 and "imported me/style@1" in done.stdout
