"""The batching front: concurrent ``submit`` calls become batched ``generate`` calls.

The Celery threads pool runs many jobs at once; each submits its request here
and waits on a future, while one background thread feeds the generator.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from evaluators.errors import InputError
from workers.generation.options import DecodeRequest, GenerationOutput, GeneratorOptions


@dataclass
class Pending:
    """A submitted request and the future its caller waits on."""

    request: DecodeRequest
    future: Future[GenerationOutput]
    submitted: float

    @property
    def rows(self) -> int:
        return self.request.num_return_sequences


CLOSE = object()
"""Queued by ``close``: serve what came before, then stop."""


class BatchingGenerator:
    """Thread-safe front that turns concurrent ``submit`` calls into batched ``generate`` calls.

    One background thread takes the first waiting request, collects more for up
    to ``batch_wait_ms`` or until ``max_batch_size`` rows, runs one
    ``generate`` and resolves the futures. An exception reaches every future of
    its batch; an :class:`InputError` from a batch of several requests is first
    retried request by request, so one bad prompt does not fail its neighbours.
    """

    def __init__(
        self,
        generator: Any,
        max_batch_size: int | None = None,
        batch_wait_ms: float | None = None,
    ) -> None:
        options = getattr(generator, "options", None) or GeneratorOptions()
        self.generator = generator
        self.max_batch_size = max_batch_size or options.max_batch_size
        self.batch_wait_ms = options.batch_wait_ms if batch_wait_ms is None else batch_wait_ms
        self.calls = 0
        """Number of ``generate`` calls made so far."""
        self._setup()

    def _setup(self) -> None:
        # Also run again in a forked child: threads and locks do not survive fork.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, request: DecodeRequest) -> Future[GenerationOutput]:
        """Queue ``request``; the future resolves to its output (``queue_ms`` filled in)."""
        if os.getpid() != self._pid:
            self._setup()
        future: Future[GenerationOutput] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("BatchingGenerator is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="assay-generate", daemon=True)
                self._thread.start()
            self._queue.put(Pending(request, future, time.perf_counter()))
        return future

    def generate(self, requests: Sequence[DecodeRequest]) -> list[GenerationOutput]:
        """Submit several requests and wait for all of them."""
        futures = [self.submit(r) for r in requests]
        return [f.result() for f in futures]

    def info(self) -> dict[str, Any]:
        block: dict[str, Any] = dict(self.generator.info())
        block["batching"] = {
            "max_batch_size": self.max_batch_size,
            "batch_wait_ms": self.batch_wait_ms,
        }
        return block

    def close(self, timeout: float | None = None) -> None:
        """Serve what is queued, then stop the thread. Later submits raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._queue.put(CLOSE)
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> BatchingGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------- worker thread

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            # The thread is dying (e.g. SystemExit): refuse new work and fail what
            # waits, rather than leave callers blocked on futures nobody serves.
            with self._lock:
                self._closed = True
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not CLOSE and item.future.set_running_or_notify_cancel():
                    item.future.set_exception(RuntimeError(f"generator thread stopped: {exc!r}"))
            raise

    def _loop(self) -> None:
        carry: Pending | None = None
        closing = False
        while not closing or carry is not None:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is CLOSE:
                break
            batch: list[Pending] = [first]
            rows = first.rows
            deadline = time.perf_counter() + self.batch_wait_ms / 1000
            while rows < self.max_batch_size and not closing:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if item is CLOSE:
                    closing = True
                elif rows + item.rows > self.max_batch_size:
                    carry = item  # starts the next batch
                    break
                else:
                    batch.append(item)
                    rows += item.rows
            self._serve(batch)
        # Drain anything that slipped in before close was marked.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not CLOSE:
                self._serve([item])

    def _serve(self, batch: list[Pending]) -> None:
        batch = [p for p in batch if p.future.set_running_or_notify_cancel()]
        if not batch:
            return
        started = time.perf_counter()
        try:
            self.calls += 1
            outputs = self.generator.generate([p.request for p in batch])
        except InputError as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            for p in batch:  # find the culprit; the others still get answers
                self._serve_alone(p, started)
            return
        except BaseException as exc:
            for p in batch:
                p.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for p, out in zip(batch, outputs, strict=True):
            p.future.set_result(with_queue_ms(out, started - p.submitted))

    def _serve_alone(self, pending: Pending, started: float) -> None:
        try:
            self.calls += 1
            (out,) = self.generator.generate([pending.request])
        except BaseException as exc:
            pending.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        pending.future.set_result(with_queue_ms(out, started - pending.submitted))


def with_queue_ms(out: GenerationOutput, seconds: float) -> GenerationOutput:
    return dataclasses.replace(out, queue_ms=round(seconds * 1000, 2))
