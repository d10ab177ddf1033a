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
