"""Worker functions for the registry's concurrency and crash tests (run in separate processes)."""

from __future__ import annotations

import random
from pathlib import Path


def reporting(fn, queue, *args) -> None:
    """Run ``fn(*args)``; put ``None`` or the traceback on ``queue`` (so a failing worker says why)."""
    import traceback

    try:
        fn(*args)
        queue.put(None)
    except BaseException:
        queue.put(traceback.format_exc())
        raise


def import_and_tag(root: str, files: list[str], worker: int) -> None:
    """Import each file as a new version of a{i} and tag it w{worker}; many workers do this at once."""
    from lorastack.registry import Registry

    registry = Registry(root)
    for i, path in enumerate(files):
        result = registry.import_file(path, f"a{i:02d}")
        registry.tag(result.version.ref, f"w{worker}")
    registry.close()


def churn(root: str, files: list[str], seed: int) -> None:
    """Imports, tags, removals and gc in a random mix, forever (until killed)."""
    from lorastack.registry import Registry

    rng = random.Random(seed)
    registry = Registry(root)
    n = 0
    while True:
        op = rng.choice(["import", "import", "tag", "gc", "rm"])
        name = f"c{rng.randrange(4)}"
        try:
            if op == "import":
                registry.import_file(Path(rng.choice(files)), name, description=f"run {n}")
            elif op == "tag":
                registry.tag(name, f"t{rng.randrange(3)}")
            elif op == "gc":
                registry.gc(grace=0)
            else:
                versions = registry.versions(name)
                if len(versions) > 2:
                    registry.remove(versions[0].ref, force=True)
        except Exception as e:  # names not yet imported, etc.
            if type(e).__name__ not in ("NotFoundError",):
                raise
        n += 1


# --- operations killed at chosen crash points (tests/test_crash_points.py) ------------------------------------------


def crashing(env: dict, op: str, *args) -> None:
    """Run operation ``op`` with the crash-point environment ``env`` (set before anything reads it)."""
    import os

    os.environ.update(env)
    globals()[f"op_{op}"](*args)


def op_import(root: str, path: str, name: str, tag: str | None = None) -> None:
    from lorastack.registry import Registry

    Registry(root).import_file(path, name, tag)


def op_pickle_import(root: str, path: str, name: str) -> None:
    from lorastack.registry import Registry

    Registry(root).import_file(path, name, allow_pickle=True)


def op_rm(root: str, ref: str, all_versions: bool = False) -> None:
    from lorastack.registry import Registry

    Registry(root).remove(ref, all_versions=all_versions, force=True)


def op_tag(root: str, ref: str, tag: str) -> None:
    from lorastack.registry import Registry

    Registry(root).tag(ref, tag)


def op_gc(root: str) -> None:
    from lorastack.registry import Registry

    Registry(root).gc(grace=0)


class _Setter:
    """What ``point_client_at`` needs of pytest's monkeypatch, applied for good (in a throw-away process)."""

    setenv = staticmethod(lambda key, value: __import__("os").environ.__setitem__(key, value))
    delenv = staticmethod(lambda key, raising=True: __import__("os").environ.pop(key, None))
    setattr = staticmethod(setattr)


def _point_at_hub(hub_env: dict) -> None:
    import os

    from lorastack.testing.hub_server import point_client_at

    point_client_at(hub_env["HF_ENDPOINT"], hub_env["HF_HOME"], _Setter)
    os.environ.update(hub_env)


def op_pull(root: str, hub_env: dict, spec: str, all_versions: bool = False) -> None:
    _point_at_hub(hub_env)
    from lorastack.registry import Registry
    from lorastack.registry.hub import pull

    pull(Registry(root), spec, all_versions=all_versions)


def op_push(root: str, hub_env: dict, ref: str, repo: str, all_versions: bool = False) -> None:
    _point_at_hub(hub_env)
    from lorastack.registry import Registry
    from lorastack.registry.hub import push

    push(Registry(root), ref, repo, all_versions=all_versions)
