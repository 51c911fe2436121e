"""Where a streaming job's events travel from the worker to the API: a Redis stream, or a file.

With a Redis broker each job has a Redis stream (``assay:stream:JOB``, XADD by
the worker, XREAD by the API, expiring after ``STREAM_TTL_S``): a stream, not
pub/sub, so an API that starts reading late still gets every event. In
embedded mode (``make run``: the worker is a child process on kombu's
filesystem transport) each job appends JSON lines to
``DATA_DIR/streams/JOB.jsonl`` and the API tails the file. With any other
broker there is no channel: the API answers a stream request in one piece
when the job ends. No database tables either way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from pathlib import Path
from typing import IO, Any, Protocol

from evaluators.contracts import StreamEvent
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)

STREAM_TTL_S = 600
"""A stream nobody reads is gone after this long (Redis)."""

MAX_EVENTS = 20_000
"""Most events one Redis stream keeps (a job's text comes in whole words, so far more than enough)."""


def redis_key(job_id: str) -> str:
    return f"assay:stream:{job_id}"


def stream_file(settings: WorkerSettings, job_id: str) -> Path:
    if not job_id.isalnum():
        raise ValueError(f"job id {job_id!r} is not alphanumeric")
    return settings.data_dir / "streams" / f"{job_id}.jsonl"


def _redis_broker(settings: WorkerSettings) -> bool:
    return settings.broker_url.startswith(("redis://", "rediss://", "unix://"))


# --------------------------------------------------------------------------- job done signals


def done_key(job_id: str) -> str:
    return f"assay:done:{job_id}"


def signal_done(settings: WorkerSettings, job_id: str) -> None:
    """Wake the API requests waiting on ``job_id`` (Redis broker); they poll otherwise. Never raises.

    A list, not pub/sub: a waiter that starts after the signal still sees it.
    """
    if not _redis_broker(settings):
        return
    try:
        pipe = _redis_client(settings.broker_url).pipeline()
        pipe.rpush(done_key(job_id), 1)
        pipe.expire(done_key(job_id), STREAM_TTL_S)
        pipe.execute()
    except Exception as exc:  # the waiters' polling still finds the job
        log.warning("job %s: done signal not sent: %s", job_id, type(exc).__name__)


async def wait_done(settings: WorkerSettings, job_id: str, timeout: float) -> bool | None:
    """Wait up to ``timeout`` s for ``job_id``'s done signal: True when it came, False when not,
    None when this broker has none (the caller polls)."""
    if not _redis_broker(settings):
        return None
    client = _async_redis(settings.broker_url)
    key = done_key(job_id)
    reply = await client.blpop([key], timeout=max(timeout, 0.01))
    if reply is None:
        return False
    await client.rpush(key, 1)  # put it back for any other request waiting on the same job
    return True


# --------------------------------------------------------------------------- the worker side


class StreamWriter(Protocol):
    def publish(self, event: StreamEvent) -> None: ...

    def close(self) -> None: ...


class _NoChannel:
    """A broker with no stream channel: the API answers in one piece at the end."""

    def publish(self, event: StreamEvent) -> None:
        pass

    def close(self) -> None:
        pass


@functools.cache
def _redis_client(url: str) -> Any:
    import redis

    # One pool per process; redis-py clients are thread-safe.
    return redis.Redis.from_url(url)


class _RedisWriter:
    def __init__(self, url: str, job_id: str) -> None:
        self.client = _redis_client(url)
        self.key = redis_key(job_id)

    def publish(self, event: StreamEvent) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(self.key, {"e": event.model_dump_json()}, maxlen=MAX_EVENTS, approximate=True)
        pipe.expire(self.key, STREAM_TTL_S)
        pipe.execute()

    def close(self) -> None:
        pass


class _FileWriter:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Opened once: if the API removes the file after a disconnect, later writes
        # go to the unlinked file instead of leaving a new one behind.
        self.file: IO[str] = path.open("a", encoding="utf-8")

    def publish(self, event: StreamEvent) -> None:
        # One write of one whole line: the reader never sees half an event as a line.
        self.file.write(event.model_dump_json() + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def stream_writer(settings: WorkerSettings, job_id: str) -> StreamWriter:
    """The worker's end of a job's stream, for this deployment's broker."""
    if settings.embedded:
        return _FileWriter(stream_file(settings, job_id))
    if _redis_broker(settings):
        return _RedisWriter(settings.broker_url, job_id)
    return _NoChannel()


# --------------------------------------------------------------------------- the API side


class StreamReader(Protocol):
    async def read(self, timeout: float) -> list[StreamEvent]:
        """The events published since the last read; waits up to ``timeout`` seconds for one."""
        ...

    async def close(self) -> None:
        """Stop reading and remove the stream."""
        ...


class _NoChannelReader:
    async def read(self, timeout: float) -> list[StreamEvent]:
        await asyncio.sleep(timeout)
        return []

    async def close(self) -> None:
        pass


_async_clients: dict[tuple[str, int], Any] = {}


def _async_redis(url: str) -> Any:
    import redis.asyncio

    # One client per URL and event loop: an asyncio connection belongs to its loop.
    key = (url, id(asyncio.get_running_loop()))
    if key not in _async_clients:
        _async_clients[key] = redis.asyncio.Redis.from_url(url)
    return _async_clients[key]


class _RedisReader:
    def __init__(self, url: str, job_id: str) -> None:
        self.client = _async_redis(url)
        self.key = redis_key(job_id)
        self.last_id = "0-0"

    async def read(self, timeout: float) -> list[StreamEvent]:
        block = max(1, int(timeout * 1000)) if timeout > 0 else None
        reply = await self.client.xread({self.key: self.last_id}, count=500, block=block)
        events = []
        for _key, entries in reply or []:
            for entry_id, fields in entries:
                self.last_id = entry_id
                events.append(StreamEvent.model_validate_json(fields[b"e"]))
        return events

    async def close(self) -> None:
        await self.client.delete(self.key)


class _FileReader:
    """Tails the job's file: complete lines only, polled every few milliseconds."""

    POLL_S = 0.02

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def _new_lines(self) -> list[StreamEvent]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [StreamEvent.model_validate_json(line) for line in lines if line.strip()]

    async def read(self, timeout: float) -> list[StreamEvent]:
        deadline = time.monotonic() + timeout
        while True:
            events = await asyncio.to_thread(self._new_lines)
            if events or time.monotonic() >= deadline:
                return events
            await asyncio.sleep(min(self.POLL_S, max(0.0, deadline - time.monotonic())))

    async def close(self) -> None:
        await asyncio.to_thread(self.path.unlink, missing_ok=True)


def stream_reader(settings: WorkerSettings, job_id: str) -> StreamReader:
    """The API's end of a job's stream, for this deployment's broker."""
    if settings.embedded:
        return _FileReader(stream_file(settings, job_id))
    if _redis_broker(settings):
        return _RedisReader(settings.broker_url, job_id)
    return _NoChannelReader()
