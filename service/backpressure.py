"""Backpressure: refuse work the queue cannot take, and answer requests that take too long.

- ``QueueGuard``: before a generation job, an audit or a drift report is
  queued, the target queue's depth (Redis list length, or the embedded
  broker's message files; read at most once a second) is compared with
  ``ASSAY_MAX_QUEUE_DEPTH``; deeper is a 503 with ``Retry-After``. The
  moderation micro-batcher has its own bound (``ASSAY_MAX_PENDING``).
- ``request_timeout``: a request that has not started its answer within
  ``ASSAY_REQUEST_TIMEOUT_S`` is cancelled and answered 504 (problem details,
  or OpenAI's shape on the OpenAI routes). Once an answer started (a stream),
  it is never cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from evaluators.errors import Overloaded, TimedOut
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)

QUEUE_RETRY_AFTER_S = 5
"""What a 503 for a deep queue tells clients to wait: a few jobs' time."""


class QueueGuard:
    """Refuses new work for a queue deeper than ``max_depth`` (0: never)."""

    def __init__(
        self,
        settings: WorkerSettings,
        max_depth: int,
        *,
        ttl_s: float = 1.0,
        measure: Callable[[WorkerSettings], dict[str, int]] | None = None,
    ) -> None:
        from service.observability import queue_depths

        self._settings = settings
        self._max_depth = max_depth
        self._ttl_s = ttl_s
        self._measure = measure or queue_depths
        self._depths: dict[str, int] = {}
        self._at = float("-inf")

    def depth(self, queue: str) -> int | None:
        """Messages waiting in ``queue`` (cached for ``ttl_s``); None when the broker does not answer."""
        if time.monotonic() - self._at > self._ttl_s:
            try:
                self._depths = self._measure(self._settings)
            except Exception as exc:
                # Sending the work will fail too, and say so (queue-unavailable); not this guard's call.
                log.warning("queue depth not measured: %s", type(exc).__name__)
                return None
            self._at = time.monotonic()
        return self._depths.get(queue, 0)

    def check(self, queue: str) -> None:
        """Raise ``Overloaded`` (503, Retry-After) when ``queue`` is deeper than allowed. Blocking: call
        it in a thread."""
        if self._max_depth <= 0:
            return
        depth = self.depth(queue)
        if depth is not None and depth >= self._max_depth:
            raise Overloaded(
                f"queue {queue!r} holds {depth} waiting messages (limit {self._max_depth}); retry later",
                queue=queue,
                depth=depth,
                retry_after_s=QUEUE_RETRY_AFTER_S,
            )


def request_timeout(timeout_s: float) -> Callable[[ASGIApp], ASGIApp]:
    """Middleware: a request whose answer has not started after ``timeout_s`` is cancelled; 504."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or timeout_s <= 0:
                await app(scope, receive, send)
                return
            started = asyncio.Event()

            async def send_and_note(message: Message) -> None:
                if message["type"] == "http.response.start":
                    started.set()
                await send(message)

            task = asyncio.ensure_future(app(scope, receive, send_and_note))
            waiter = asyncio.ensure_future(started.wait())
            try:
                await asyncio.wait({task, waiter}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
                if not task.done() and not started.is_set():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    # Raised inside Litestar's stack: the app's exception handlers shape the 504.
                    raise TimedOut(f"no answer within {timeout_s:g} s; the request was cancelled")
                await task
            finally:
                waiter.cancel()
                task.cancel()  # a no-op once it finished; stops it when this request is cancelled

        return middleware

    return wrap
