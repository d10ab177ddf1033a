"""A scan killed with SIGKILL at each of its crash points leaves a consistent registry, and a rerun finishes the job:
every adapter file recorded exactly once, nothing listed without its file."""

import json
import os
import signal
import subprocess
import sys

import pytest

from lorastack.registry import Registry
from lorastack.registry.scan import scan
from lorastack.testing.registry import small_adapter
from tests.registry_helpers import listed_and_loadable

#: Run in a child: small batches, so a kill lands between batches as well as inside one.
CHILD = """
import sys
from lorastack.registry import Registry
from lorastack.registry import scan as s
s.BATCH_FILES = 2
s.scan(Registry(sys.argv[1]), [sys.argv[2]], copy=sys.argv[3] == "copy")
"""


def killed_scan(root, folder, point: str, copy: bool = False) -> None:
    env = {**os.environ, "LORASTACK_CRASH_AT": point}
    done = subprocess.run([sys.executable, "-c", CHILD, str(root), str(folder), "copy" if copy else "in-place"],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


def make_library(folder, n=7):
    folder.mkdir()
    return [small_adapter(folder / f"a{i}.safetensors", seed=i) for i in range(n)]


def paths_recorded(registry) -> list[str]:
    return sorted(r["path"] for r in registry.list(all_versions=True) if not r["missing"])


@pytest.mark.parametrize(
    ("point", "copy"),
    [
        ("registry.scan.batch.before-commit#1", False),
        ("registry.scan.batch.before-commit#3", False),
        ("registry.scan.batch.after-commit#2", False),
        ("registry.scan.copy.before-commit#2", True),
    ],
)
def test_a_killed_scan_is_consistent_and_resumes(tmp_path, point, copy):
    files = make_library(tmp_path / "lib")
    root = tmp_path / "registry"
    killed_scan(root, tmp_path / "lib", point, copy)
    registry = Registry(root)
    partial = listed_and_loadable(registry)  # every listed version has its file
    assert len(partial) < len(files) and not registry.verify().index
    report = scan(registry, [tmp_path / "lib"], copy=copy)
    assert report.unchanged + len(report.added) == len(files)
    assert paths_recorded(registry) == sorted(map(str, files))  # each file once: no adapter made twice
    assert len(listed_and_loadable(registry)) == len(files) and registry.verify().clean


def test_a_scan_killed_before_marking_missing_marks_them_on_rerun(tmp_path):
    files = make_library(tmp_path / "lib", n=3)
    root = tmp_path / "registry"
    scan(Registry(root), [tmp_path / "lib"])
    files[1].unlink()
    killed_scan(root, tmp_path / "lib", "registry.scan.missing.before-commit")
    registry = Registry(root)
    assert not registry.list(missing=True)  # the kill undid the whole marking, not half of it
    report = scan(registry, [tmp_path / "lib"])
    assert [m["path"] for m in report.missing] == [str(files[1])] and report.hashed == 0
    assert [r["path"] for r in registry.list(missing=True)] == [str(files[1])]


@pytest.mark.parametrize("point", ["registry.scan.batch.after-commit#1", "registry.scan.sidecars.before-done#1"])
def test_sidecars_of_a_scan_killed_before_recording_them_are_recorded_by_the_next(tmp_path, point):
    """The versions are committed before their sidecars are read: a kill in between leaves them marked pending,
    and the rerun (which reads no file again: all are unchanged) records their sidecars."""
    from lorastack.registry.metadata import get_metadata

    files = make_library(tmp_path / "lib", n=2)
    for f in files:
        f.with_suffix(".json").write_text(json.dumps({"activation text": f"tok of {f.stem}", "preferred weight": 0.6}))
    root = tmp_path / "registry"
    killed_scan(root, tmp_path / "lib", point)
    registry = Registry(root)
    assert [r["ref"] for r in registry.list()] == ["a0@1", "a1@1"]
    assert sorted(ref for ref, _, _ in scan_records_pending(registry)) == ["a0@1", "a1@1"]
    # killed before the values were stored, or after (then storing them again changes nothing)
    assert ("weight" in get_metadata(registry, "a0@1")) == point.startswith("registry.scan.sidecars")
    report = scan(registry, [tmp_path / "lib"])
    assert report.hashed == 0 and report.unchanged == 2
    for f in files:
        values = get_metadata(registry, f"{f.stem}@1")
        assert values["weight"].value == 0.6 and values["trigger_groups"].value == [[f"tok of {f.stem}"]]
    assert not scan_records_pending(registry)


def scan_records_pending(registry):
    from lorastack.registry.scan_records import pending_sidecars

    return pending_sidecars(registry._db())
