"""Supervision: run a process and start it again whenever it exits on its own.

A Celery worker can exit on a library bug (kombu's Redis transport raises
``AttributeError: 'NoneType' object has no attribute 'hostname'`` while
restoring unacked messages after a broker restart) and nothing would start
it again. ``Supervisor`` restarts it with a backoff (0.5 s doubling to 10 s,
back to 0.5 s after 30 s of uptime). The embedded mode's worker child runs
under one, and ``python -m workers.supervise CMD...`` runs any command under
one (the dev stacks' workers; Compose's ``restart: unless-stopped`` does the
same job for the images).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies, even by SIGKILL (a ``preexec_fn``)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class Supervisor:
    """Keeps one child process running ``command`` until ``stop()``."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        name: str = "worker",
        first_backoff_s: float = 0.5,
        longest_backoff_s: float = 10.0,
        stable_after_s: float = 30.0,
        **popen: Any,
    ) -> None:
        self.command = list(command)
        self.name = name
        self.first_backoff_s = first_backoff_s
        self.longest_backoff_s = longest_backoff_s
        self.stable_after_s = stable_after_s
        self.popen = popen
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        proc = self.process
        return proc.pid if proc is not None else None

    def alive(self) -> bool:
        proc = self.process
        return proc is not None and proc.poll() is None

    def start(self) -> None:
        with self._lock:
            self._spawn()
        self._thread = threading.Thread(target=self._watch, name=f"supervise-{self.name}", daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        self.process = subprocess.Popen(self.command, preexec_fn=die_with_parent, **self.popen)
        log.info("%s started (pid %d)", self.name, self.process.pid)

    def _watch(self) -> None:
        backoff = self.first_backoff_s
        while True:
            proc = self.process
            assert proc is not None
            started = time.monotonic()
            code = proc.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= self.stable_after_s:
                backoff = self.first_backoff_s
            log.warning(
                "%s (pid %d) exited with code %s; restarting in %.1f s", self.name, proc.pid, code, backoff
            )
            if self._stopping.wait(backoff):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self._spawn()
                self.restarts += 1
            backoff = min(backoff * 2, self.longest_backoff_s)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the child (Celery's warm shutdown finishes running jobs), SIGKILL after ``timeout``."""
        with self._lock:
            self._stopping.set()
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return proc.returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.supervise", description="Run a command and restart it whenever it exits."
    )
    parser.add_argument("--name", default="worker", help="name in the log lines")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command (after --)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    supervisor = Supervisor(command, name=args.name)
    done = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping %s", signum, args.name)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    supervisor.start()
    log.info("supervising %s (pid %d) from pid %d", args.name, supervisor.pid or 0, os.getpid())
    done.wait()
    supervisor.stop(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
