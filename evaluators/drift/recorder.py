"""The drift recorder: a bounded buffer that a background thread drains into the store in batches.

``record`` never blocks and never raises: it appends under a lock, and when the
buffer is full the events that do not fit are dropped and counted (the
``stats`` say how many). A daemon thread hands batches to the sink (the store's
write, one transaction per batch). An event is acknowledged when its batch's
transaction has committed; ``flush`` waits for that, so an acknowledged event
survives the process. A failing sink is retried with backoff; a batch that
still fails is counted as failed, never retried forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from evaluators.contracts.drift import DriftEvent

log = logging.getLogger(__name__)

Sink = Callable[[Sequence[DriftEvent]], None]
"""Persists a batch durably (one transaction) or raises."""


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
    ) -> None:
        if capacity < 1 or batch < 1:
            raise ValueError("capacity and batch must be positive")
        self._sink = sink
        self.capacity = capacity
        self.batch = batch
        self.interval_s = interval_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._buffer: deque[DriftEvent] = deque()
        self._cond = threading.Condition()
        self._recorded = self._acked = self._dropped = self._failed = self._batches = 0
        self._in_flight = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def record(self, events: Sequence[DriftEvent]) -> int:
        """Queue ``events``; returns how many were accepted (the rest are dropped and counted)."""
        if not events:
            return 0
        with self._cond:
            if self._closed:
                self._dropped += len(events)
                return 0
            room = self.capacity - len(self._buffer) - self._in_flight
            accepted = events if len(events) <= room else events[: max(0, room)]
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
                batch = [self._buffer.popleft() for _ in range(take)]
                self._in_flight = take
            ok = self._write(batch)
            with self._cond:
                self._in_flight = 0
                self._batches += 1
                if ok:
                    self._acked += len(batch)
                else:
                    self._failed += len(batch)
                self._cond.notify_all()

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
