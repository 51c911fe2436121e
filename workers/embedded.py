"""Embedded mode: a real Celery worker on kombu's filesystem transport, no server needed.

``make run`` starts the API; with no ``ASSAY_BROKER_URL`` the API starts this
worker as a child process and stops it on exit. The worker runs supervised (a
child that exits on its own is started again), and so does a Celery beat
child that sends the periodic sweeps (orphaned jobs, stalled audits).
"""

from __future__ import annotations

import logging
import os
import sys

from evaluators.settings import evaluator_settings
from workers.settings import WorkerSettings
from workers.supervise import Supervisor

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


def beat_command(schedule: str) -> list[str]:
    """The Celery beat command line: the periodic sweeps, one beat per deployment."""
    return [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat",
        "--schedule", schedule, "--loglevel", "INFO",
    ]  # fmt: skip


class EmbeddedWorker:
    """A supervised Celery worker child and a supervised beat child, tied to this process's lifetime."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.worker: Supervisor | None = None
        self.beat: Supervisor | None = None

    def start(self) -> None:
        # The children read the same folders as this process, even where they came from code, not env.
        env = dict(os.environ)
        env.setdefault("ASSAY_DATA_DIR", str(self.settings.data_dir))
        env.setdefault("ASSAY_POLICY_DIR", str(evaluator_settings().policy_dir))
        command = worker_command(self.settings.queues(), concurrency=self.settings.worker_concurrency)
        self.worker = Supervisor(command, name="embedded Celery worker", env=env)
        self.worker.start()
        # The broker folders must exist before this process sends a job (and before the child polls).
        from workers.celery_app import broker_folders

        for folder in broker_folders(self.settings.data_dir).values():
            folder.mkdir(parents=True, exist_ok=True)
        schedule = self.settings.data_dir / "beat-schedule"
        self.beat = Supervisor(beat_command(str(schedule)), name="embedded Celery beat", env=env)
        self.beat.start()

    def alive(self) -> bool:
        return self.worker is not None and self.worker.alive()

    def stop(self, timeout: float = 10.0) -> None:
        for child in (self.beat, self.worker):
            if child is not None:
                child.stop(timeout)
