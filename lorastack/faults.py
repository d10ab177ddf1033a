"""Crash points: the moments inside a multi-step write at which tests kill lorastack on purpose.

A crash point is a named line in a write path (``crash_point("registry.rm.after-commit")``). With
``LORASTACK_CRASH_AT=NAME`` set, the process kills itself with SIGKILL when it reaches that point: no cleanup, no
``finally``, no ``atexit``, as a power cut or the OOM killer would stop it. ``NAME#N`` kills at the N-th time the
point is reached. With ``LORASTACK_CRASH_TRACE=FILE`` every point reached is appended to FILE, one name per line,
so a test can first list the points of an operation and then kill it at each one in turn. Unset (always, outside
tests), a crash point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "LORASTACK_CRASH_AT"
TRACE_ENV = "LORASTACK_CRASH_TRACE"

_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die here if the environment names this point (see the module docstring); otherwise do nothing."""
    trace, target = os.environ.get(TRACE_ENV), os.environ.get(CRASH_ENV)
    if not trace and not target:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(name + "\n")
    if target and target in (name, f"{name}#{_hits[name]}"):
        kill = getattr(signal, "SIGKILL", None)
        if kill is None:  # pragma: no cover - Windows
            os._exit(137)
        os.kill(os.getpid(), kill)
