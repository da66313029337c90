"""Test hooks for crash and retry tests, inert otherwise.

``CHURN_TEST_KILL_AT=name[:n]`` makes the process SIGKILL itself the n-th time (default
first) it passes ``fault_point(name)``; with ``CHURN_TEST_KILL_MARKER=<file>`` the point's
name is written there just before the kill, so a test can tell that the process died where
it meant, not elsewhere. ``CHURN_TEST_RETRY_AT=name[:n]`` makes the n-th pass (only that
one) ask Dagster to retry the step, as a transient fault would."""

from __future__ import annotations

import os
import signal
import threading

from churn_assets.settings import Settings

_hits: dict[tuple[str, str], int] = {}
_lock = threading.Lock()


def _passes(setting: str, name: str) -> tuple[int, int] | None:
    """(passes so far including this one, n) when the setting targets ``name``."""
    target = Settings.read_one(setting)
    if not target:
        return None
    point, _, nth = target.partition(":")
    if point != name:
        return None
    with _lock:
        _hits[setting, name] = _hits.get((setting, name), 0) + 1
        return _hits[setting, name], int(nth or 1)


def fault_point(name: str) -> None:
    kill = _passes("test_kill_at", name)
    if kill and kill[0] >= kill[1]:
        marker = Settings.read_one("test_kill_marker")
        if marker:
            with open(marker, "w") as f:
                f.write(f"{name}:{kill[0]}\n")
                f.flush()
                os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    retry = _passes("test_retry_at", name)
    if retry and retry[0] == retry[1]:
        import dagster as dg

        raise dg.RetryRequested(max_retries=1, seconds_to_wait=0)
