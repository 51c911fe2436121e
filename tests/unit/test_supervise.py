"""The supervisor restarts a real child process that exits on its own, and stops it when asked."""

from __future__ import annotations

import os
import signal
import sys
import time

from workers.supervise import Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def _wait_for(condition: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_a_killed_child_is_started_again_and_stop_ends_it() -> None:
    sup = Supervisor(SLEEPER, name="sleeper", first_backoff_s=0.05)
    sup.start()
    try:
        first = sup.pid
        assert first is not None and sup.alive()
        os.kill(first, signal.SIGKILL)
        assert _wait_for(lambda: sup.pid != first and sup.alive()), "the child was not restarted"
        assert sup.restarts == 1
        second = sup.pid
    finally:
        code = sup.stop(timeout=5)
    assert code == -signal.SIGTERM and not sup.alive()
    time.sleep(0.3)  # a stopped supervisor starts nothing more
    assert sup.pid == second and sup.restarts == 1


def test_a_child_that_keeps_failing_is_restarted_with_growing_pauses() -> None:
    sup = Supervisor([sys.executable, "-c", "raise SystemExit(3)"], name="crasher", first_backoff_s=0.1)
    sup.start()
    try:
        assert _wait_for(lambda: sup.restarts >= 3, timeout=10)
        started = time.monotonic()
        count = sup.restarts
        # backoff 0.1, 0.2, 0.4, 0.8...: the next restart comes no sooner than 0.8 s later
        assert _wait_for(lambda: sup.restarts > count, timeout=10)
        assert time.monotonic() - started >= 0.5
    finally:
        sup.stop(timeout=5)
