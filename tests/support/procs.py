"""Child processes started by tests, so a failing test cannot leave one running."""

from __future__ import annotations

import contextlib
import subprocess

STARTED: list[subprocess.Popen] = []


def track(proc: subprocess.Popen) -> subprocess.Popen:
    STARTED.append(proc)
    return proc


def reap() -> None:
    """Kill whatever is still running (a test that passed has already stopped its own)."""
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
                proc.communicate(timeout=10)
