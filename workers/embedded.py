"""Embedded mode: a real Celery worker on kombu's filesystem transport, no server needed.

``make run`` starts the API; with no ``ASSAY_BROKER_URL`` the API starts this
worker as a child process in its own process group and stops it on exit.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from evaluators.settings import evaluator_settings
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


def worker_command(
    queues: list[str], *, concurrency: int, hostname: str = "assay-embedded@%h", extra: tuple[str, ...] = ()
) -> list[str]:
    """The Celery worker command line Assay runs: threads pool, so jobs share batched decoding."""
    return [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
        "--pool", "threads", "--concurrency", str(concurrency), "-Q", ",".join(queues),
        "--hostname", hostname, "--loglevel", "INFO", "--without-gossip", "--without-mingle", *extra,
    ]  # fmt: skip


def die_with_parent() -> None:
    """Ask Linux to SIGTERM the worker when the API process dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class EmbeddedWorker:
    """A Celery worker child process tied to this process's lifetime."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # The child reads the same folders as this process, even where they came from code, not env.
        env = dict(os.environ)
        env.setdefault("ASSAY_DATA_DIR", str(self.settings.data_dir))
        env.setdefault("ASSAY_POLICY_DIR", str(evaluator_settings().policy_dir))
        self.process = subprocess.Popen(
            worker_command(self.settings.queues(), concurrency=self.settings.worker_concurrency),
            env=env,
            preexec_fn=die_with_parent,
        )
        log.info("embedded Celery worker started (pid %d)", self.process.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # warm shutdown: finish running jobs
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
