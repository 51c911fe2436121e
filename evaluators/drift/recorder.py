"""The drift recorder: a bounded buffer that a background thread drains into the store in batches.

``record`` never blocks and never raises: it appends under a lock, and when the
buffer is full the events that do not fit are dropped and counted (the
``stats`` say how many). A daemon thread hands batches to the sink (the store's
write, one transaction per batch). An event is acknowledged when its batch's
transaction has committed; ``flush`` waits for that, so an acknowledged event
survives the process. A failing sink is retried with backoff; a batch that
still fails is counted as failed, never retried forever.

Events may come with their filtered text still to embed (the policy's
``drift.embed_inline`` off, the default): the thread embeds them in chunks just
before the write, so the MiniLM pass is off the request path and amortised over
a batch. The text lives only in this buffer; the store gets the vector.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from evaluators.contracts.drift import DriftEvent

log = logging.getLogger(__name__)

Sink = Callable[[Sequence[DriftEvent]], None]
"""Persists a batch durably (one transaction) or raises."""
Embed = Callable[[Sequence[str]], np.ndarray]
"""Reduced embeddings of texts, one row each."""
EMBED_CHUNK = 32
"""Texts per encoder call: large enough to amortise, small enough not to hold a core for long."""


@dataclass(frozen=True)
class RecorderStats:
    """Counters since the recorder started."""

    recorded: int
    """Events accepted into the buffer."""
    acknowledged: int
    """Events whose batch committed: durable."""
    dropped: int
    """Events refused because the buffer was full."""
    failed: int
    """Events whose batch the sink could not write after retries."""
    unembedded: int
    """Events written without the embedding they were queued for, because the encoder failed."""
    pending: int
    """Events in the buffer or in the batch being written."""
    batches: int
    capacity: int

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class DriftRecorder:
    """Buffers events and writes them in the background; ``record`` is O(1) and never waits on I/O."""

    def __init__(
        self,
        sink: Sink,
        *,
        capacity: int = 50_000,
        batch: int = 2_000,
        interval_s: float = 0.5,
        retries: int = 3,
        backoff_s: float = 0.2,
        name: str = "assay-drift-recorder",
        embed: Embed | None = None,
    ) -> None:
        if capacity < 1 or batch < 1:
            raise ValueError("capacity and batch must be positive")
        self._sink = sink
        self.capacity = capacity
        self.batch = batch
        self.interval_s = interval_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.embed = embed
        """Encoder for events queued with a text; ``DriftRuntime`` supplies its own when this is None."""
        self._buffer: deque[tuple[DriftEvent, str | None]] = deque()
        self._cond = threading.Condition()
        self._recorded = self._acked = self._dropped = self._failed = self._batches = 0
        self._unembedded = 0
        self._in_flight = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def record(self, events: Sequence[DriftEvent], texts: Sequence[str | None] | None = None) -> int:
        """Queue ``events``; returns how many were accepted (the rest are dropped and counted).

        ``texts``, one per event, are embedded by the writer thread into events that have
        no embedding yet (None: nothing to embed).
        """
        if not events:
            return 0
        if texts is not None and len(texts) != len(events):
            raise ValueError("texts must match events one to one")
        pending = list(zip(events, texts if texts is not None else [None] * len(events), strict=True))
        with self._cond:
            if self._closed:
                self._dropped += len(events)
                return 0
            room = self.capacity - len(self._buffer) - self._in_flight
            accepted = pending if len(pending) <= room else pending[: max(0, room)]
            self._buffer.extend(accepted)
            self._recorded += len(accepted)
            self._dropped += len(events) - len(accepted)
            if len(self._buffer) >= self.batch:
                self._cond.notify_all()
            return len(accepted)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every event recorded before this call is written; True when all were acknowledged."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._recorded
            failed_before = self._failed
            self._cond.notify_all()
            while self._acked + self._failed < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(timeout=left if left is None else min(left, 0.5))
            return self._failed == failed_before

    def stats(self) -> RecorderStats:
        with self._cond:
            return RecorderStats(
                recorded=self._recorded,
                acknowledged=self._acked,
                dropped=self._dropped,
                failed=self._failed,
                unembedded=self._unembedded,
                pending=len(self._buffer) + self._in_flight,
                batches=self._batches,
                capacity=self.capacity,
            )

    def close(self, timeout: float = 10.0) -> None:
        """Write what is buffered, then stop the thread."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._buffer and not self._closed:
                    self._cond.wait(self.interval_s)
                if len(self._buffer) < self.batch and not self._closed:
                    # Give a partial batch a moment to fill, unless someone is flushing.
                    self._cond.wait(self.interval_s / 10)
                if not self._buffer:
                    if self._closed:
                        return
                    continue
                take = min(self.batch, len(self._buffer))
                queued = [self._buffer.popleft() for _ in range(take)]
                self._in_flight = take
            batch = self._embedded(queued)
            ok = self._write(batch)
            with self._cond:
                self._in_flight = 0
                self._batches += 1
                if ok:
                    self._acked += len(batch)
                else:
                    self._failed += len(batch)
                self._cond.notify_all()

    def _embedded(self, queued: list[tuple[DriftEvent, str | None]]) -> list[DriftEvent]:
        """The events, with the queued texts embedded; an encoder failure leaves them without."""
        todo = [i for i, (e, t) in enumerate(queued) if t is not None and e.embedding is None]
        events = [e for e, _ in queued]
        if not todo:
            return events
        if self.embed is None:
            with self._cond:
                self._unembedded += len(todo)
            return events
        for start in range(0, len(todo), EMBED_CHUNK):
            chunk = todo[start : start + EMBED_CHUNK]
            try:
                rows = self.embed([queued[i][1] or "" for i in chunk])
            except Exception as exc:  # drift is an observer: the event is still written
                log.warning("drift: %d events not embedded: %s", len(chunk), type(exc).__name__)
                with self._cond:
                    self._unembedded += len(chunk)
                continue
            for i, row in zip(chunk, rows, strict=True):
                events[i] = events[i].model_copy(update={"embedding": tuple(float(x) for x in row)})
        return events

    def _write(self, batch: list[DriftEvent]) -> bool:
        for attempt in range(self.retries + 1):
            try:
                self._sink(batch)
                return True
            except Exception as exc:  # the sink is the store: any failure is retried, then counted
                if attempt == self.retries:
                    log.warning("drift: %d events not written: %s", len(batch), type(exc).__name__)
                    return False
                time.sleep(self.backoff_s * 2**attempt)
        return False
