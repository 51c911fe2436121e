"""Assay as separate processes: the API and Celery workers over a real Redis and a SQLite store.

Each stack uses its own queue names and data folder, so stacks never see each other's jobs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devstack.redis import free_port
from workers.embedded import beat_command, worker_command
from workers.supervise import die_with_parent

ROOT = Path(__file__).resolve().parents[1]


class StackError(RuntimeError):
    """The API process did not become ready; the message carries the processes' logs."""


@dataclass
class Stack:
    """The processes of one environment and how to reach them."""

    base_url: str
    env: dict[str, str]
    queue: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    api: subprocess.Popen[bytes] | None = None
    beat: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)

    def start_worker(
        self, name: str, concurrency: int = 8, *, supervised: bool = False
    ) -> subprocess.Popen[bytes]:
        """A worker process; ``supervised``: under ``workers.supervise``, which restarts it when it exits."""
        command = worker_command(
            [self.queue],
            concurrency=concurrency,
            hostname=f"{name}-{uuid.uuid4().hex[:6]}@%h",
            extra=("--without-heartbeat",),
        )
        if supervised:
            command = [sys.executable, "-m", "workers.supervise", "--name", name, "--", *command]
        proc = self._spawn(command, f"worker-{name}.log")
        self.workers.append(proc)
        return proc

    def start_beat(self) -> subprocess.Popen[bytes]:
        """Celery beat: the periodic job and audit sweeps for this stack's queue."""
        schedule = Path(self.env["ASSAY_DATA_DIR"]) / "beat-schedule"
        self.beat = self._spawn(beat_command(str(schedule)), "beat.log")
        return self.beat

    def _spawn(self, command: list[str], log_name: str) -> subprocess.Popen[bytes]:
        """One process of the stack in its own session, its output appended to ``log_name``."""
        log = Path(self.env["ASSAY_DATA_DIR"]) / log_name
        if log not in self.logs:
            self.logs.append(log)
        return subprocess.Popen(
            command,
            env=self.env,
            cwd=ROOT,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def start_api(self, timeout: float = 120.0) -> None:
        """Start the API process and wait until it is ready; ``StackError`` with the logs when it is not."""
        self.api = self._spawn([sys.executable, "-m", "service.cli", "serve"], "api.log")
        deadline = time.monotonic() + timeout
        with self.client(timeout=5) as c:
            while True:
                try:
                    if c.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or self.api.poll() is not None:
                    raise StackError("API did not become ready:\n" + self.dump_logs())
                time.sleep(0.25)

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def close(self) -> None:
        for proc in [self.api, self.beat, *self.workers]:
            if proc is not None:
                self.stop(proc)

    def dump_logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.logs if p.exists()
        )


def start_stack(
    redis_url: str, data: Path, *, workers: int = 1, extra_env: dict[str, str] | None = None
) -> Stack:
    """Start the API process and ``workers`` Celery worker processes; wait until the API is ready.

    Raises ``StackError`` with the processes' logs when the API is not ready within two minutes.
    """
    queue = f"test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {
        **os.environ,
        "ASSAY_BROKER_URL": redis_url,
        "ASSAY_DATA_DIR": str(data),
        "ASSAY_DATABASE_URL": f"sqlite:///{data / 'assay.db'}",
        "ASSAY_DEFAULT_QUEUE": queue,
        # A model routed to a queue nobody serves: its jobs stay queued (cancel test).
        "ASSAY_MODEL_QUEUES": f"parked-model={queue}-parked",
        "ASSAY_MODEL_DIR": os.environ.get("ASSAY_MODEL_DIR", str(ROOT / ".cache" / "models")),
        "ASSAY_PORT": str(port),
        "ASSAY_POLICY_DIR": str(ROOT / "policies"),
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    st = Stack(base_url=f"http://127.0.0.1:{port}", env=env, queue=queue)
    for i in range(workers):
        st.start_worker(f"w{i + 1}")
    try:
        st.start_api()
    except StackError:
        st.close()
        raise
    return st
