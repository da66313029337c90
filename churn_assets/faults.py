"""Test hook for crash tests: ``CHURN_TEST_KILL_AT=name[:n]`` makes the process SIGKILL
itself the n-th time (default first) it passes ``fault_point(name)``. Inert otherwise."""

from __future__ import annotations

import os
import signal
import threading

from churn_assets.settings import Settings

_hits: dict[str, int] = {}
_lock = threading.Lock()


def fault_point(name: str) -> None:
    target = Settings.read_one("test_kill_at")
    if not target:
        return
    point, _, nth = target.partition(":")
    if point != name:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        hit = _hits[name] >= int(nth or 1)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
