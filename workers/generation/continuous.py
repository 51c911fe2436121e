"""Continuous batching: a request joins the running decode at the next step and leaves when done.

``ContinuousBatcher`` keeps ``BatchingGenerator``'s front (``submit`` from any
thread, a future per request, fork safety, ``close``) and replaces its loop:
instead of one ``generate`` per gathered batch, its thread drives a
:class:`~workers.generation.running.RunningBatch` one step at a time. Between
steps it admits what has queued, up to ``max_batch_size`` rows, with one
prefill for all newcomers; so a request that arrives mid-decode starts at the
next step instead of waiting for the batch, a short job is not held back by
long ones, and an idle generator starts a lone request at once (no wait to
fill a batch).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from workers.generation.options import DecodeRequest, GenerationOutput
from workers.generation.sampling import Row
from workers.generation.scheduler import CLOSE, BatchingGenerator, Pending, with_queue_ms


class StepBatch(Protocol):
    """Rows decoding together: ``RunningBatch`` (transformers) or ``LlamaRunningBatch`` (llama.cpp)."""

    def __len__(self) -> int: ...

    def admit(self, rows: Sequence[Row]) -> None: ...

    def step(self) -> list[Row]: ...


class StepGenerator(Protocol):
    """What the per-step loop needs of an engine: rows of a request, a batch, outputs, a lock."""

    def rows_for(self, request: DecodeRequest, index: int = 0) -> tuple[list[Row], int]: ...

    def running_batch(self) -> StepBatch: ...

    def output(
        self, rows: Sequence[Row], prompt_tokens: int, spent_ms: float, peers: int
    ) -> GenerationOutput: ...

    @property
    def lock(self) -> threading.Lock: ...


@dataclass
class Active:
    """A request in the running batch."""

    pending: Pending
    rows: list[Row]
    prompt_tokens: int
    admitted: float
    peers: int
    left: int = field(init=False)

    def __post_init__(self) -> None:
        self.left = len(self.rows)


class ContinuousBatcher(BatchingGenerator):
    """``BatchingGenerator``'s interface over per-step scheduling of a :class:`StepGenerator`."""

    generator: StepGenerator

    def __init__(self, generator: StepGenerator, max_batch_size: int | None = None) -> None:
        super().__init__(generator, max_batch_size=max_batch_size, batch_wait_ms=0)
        self.steps = 0
        """Decode steps run so far (each one forward pass over the running batch)."""

    def info(self) -> dict[str, Any]:
        block = super().info()
        block["batching"] = {"mode": "continuous", "max_batch_size": self.max_batch_size}
        return block

    def _loop(self) -> None:
        gen = self.generator
        batch = gen.running_batch()
        waiting: deque[Pending] = deque()
        active: dict[int, Active] = {}
        serial = 0
        closing = False
        while True:
            # Block only when there is nothing to decode; otherwise take what has queued.
            while True:
                try:
                    item = self._queue.get(block=not (len(batch) or waiting or closing))
                except queue.Empty:
                    break
                if item is CLOSE:
                    closing = True
                else:
                    waiting.append(item)
            newcomers: list[Active] = []
            room = self.max_batch_size - len(batch)
            while waiting and (waiting[0].rows <= room or not (len(batch) or newcomers)):
                pending = waiting.popleft()
                if not pending.future.set_running_or_notify_cancel():
                    continue
                serial += 1
                try:
                    rows, prompt_tokens = gen.rows_for(pending.request)
                except Exception as exc:  # this request's fault alone (InputError), or the tokenizer's
                    pending.future.set_exception(exc)
                    continue
                for row in rows:
                    row.request_index = serial  # finished rows find their request by it
                room -= len(rows)
                newcomers.append(Active(pending, rows, prompt_tokens, time.perf_counter(), 0))
                active[serial] = newcomers[-1]
            if newcomers:
                try:
                    with gen.lock:
                        self.calls += 1
                        batch.admit([r for a in newcomers for r in a.rows])
                except BaseException as exc:
                    # The prefill failed before the batch changed: only the newcomers fail.
                    for a in newcomers:
                        del active[a.rows[0].request_index]
                        a.pending.future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
            if not len(batch):
                if closing and not waiting:
                    return
                continue
            for a in active.values():
                a.peers = max(a.peers, len(batch))
            try:
                with gen.lock:
                    finished = batch.step()
                    self.steps += 1
            except BaseException as exc:
                # The model failed mid-step: every request in the batch gets the error.
                for a in active.values():
                    a.pending.future.set_exception(exc)
                active.clear()
                batch = gen.running_batch()
                if not isinstance(exc, Exception):
                    raise
                continue
            for row in finished:
                a = active[row.request_index]
                a.left -= 1
                if a.left == 0:
                    del active[row.request_index]
                    spent = (time.perf_counter() - a.admitted) * 1000
                    out = gen.output(a.rows, a.prompt_tokens, spent, a.peers)
                    a.pending.future.set_result(with_queue_ms(out, a.admitted - a.pending.submitted))
