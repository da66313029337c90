"""Test hook for crash tests: ``CHURN_TEST_KILL_AT=name[:n]`` makes the process SIGKILL
itself the n-th time (default first) it passes ``fault_point(name)``. Inert otherwise.

With ``CHURN_TEST_KILL_MARKER=<file>`` the point's name is written there just before the
kill, so a test can tell that the process died where it meant, not elsewhere."""

from __future__ import annotations

import os
import signal
import threading

_hits: dict[str, int] = {}
_lock = threading.Lock()


def fault_point(name: str) -> None:
    target = os.environ.get("CHURN_TEST_KILL_AT")
    if not target:
        return
    point, _, nth = target.partition(":")
    if point != name:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        hit = _hits[name] >= int(nth or 1)
    if hit:
        marker = os.environ.get("CHURN_TEST_KILL_MARKER")
        if marker:
            with open(marker, "w") as f:
                f.write(f"{name}:{_hits[name]}\n")
                f.flush()
                os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
