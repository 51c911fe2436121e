"""Micro-batching: concurrent requests share one model call, off the event loop.

Requests for the same key (policy and stage) queue up; one drain task per
key takes everything queued (up to ``max_batch``), hands it to a thread pool
as one batch, and resolves each request's future. While a batch runs, the
next one fills by itself, so there is no fixed delay at low load and large
batches at high load.

Adaptive: a request that finds no batch in flight goes straight to the
thread pool from the caller's task, with no queue and no hop through the drain
task (an app making one call at a time pays nothing for batching). What
arrives while it runs queues and goes as one batch when it ends. Only while
other batches hold the inference threads, so that a new batch would wait
anyway, does ``wait_ms`` gather stragglers into it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

from evaluators.errors import Overloaded, TimedOut

I = TypeVar("I")  # noqa: E741 - item
R = TypeVar("R")  # result


class MicroBatcher(Generic[I, R]):
    """Group concurrent ``submit`` calls per key into batched ``runner`` calls."""

    def __init__(
        self,
        runner: Callable[[Hashable, Sequence[I]], Sequence[R]],
        executor: Executor,
        *,
        max_batch: int = 64,
        wait_ms: float = 0.0,
        timeout_s: float = 30.0,
        max_pending: int = 4096,
    ) -> None:
        self._runner = runner
        self._executor = executor
        self._max_batch = max_batch
        self._wait_s = wait_ms / 1000.0
        self._timeout_s = timeout_s
        self._max_pending = max_pending
        self._queues: dict[Hashable, asyncio.Queue[tuple[I, asyncio.Future[R]]]] = {}
        self._tasks: dict[Hashable, asyncio.Task[None]] = {}
        self._pending = 0
        self._inflight = 0
        """Batches handed to the executor and not finished yet (all keys)."""
        self._direct: dict[Hashable, asyncio.Future[None]] = {}
        """Keys with a batch sent straight from ``submit_many``, done when that batch ends."""

    async def submit(self, key: Hashable, item: I) -> R:
        return (await self.submit_many(key, [item]))[0]

    async def submit_many(self, key: Hashable, items: Sequence[I]) -> list[R]:
        """Queue ``items`` under ``key``; they may share batches with other callers."""
        if self._pending + len(items) > self._max_pending:
            raise Overloaded(
                f"{self._pending} texts already wait for inference; retry shortly",
                retry_after_s=1,
            )
        loop = asyncio.get_running_loop()
        queue = self._queues.get(key)
        idle = not self._inflight and key not in self._direct and (queue is None or queue.empty())
        if idle and len(items) <= self._max_batch:
            return await self._run_direct(key, items)
        if queue is None:
            queue = self._queues[key] = asyncio.Queue()
            self._tasks[key] = loop.create_task(self._drain(key, queue))
        futures: list[asyncio.Future[R]] = []
        for item in items:
            fut: asyncio.Future[R] = loop.create_future()
            queue.put_nowait((item, fut))
            futures.append(fut)
        self._pending += len(items)
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), self._timeout_s))
        except TimeoutError:
            # A timeout, not a full queue: 504 (the queue bound above is the 503).
            raise TimedOut(f"inference did not finish within {self._timeout_s:g} s") from None

    async def _run_direct(self, key: Hashable, items: Sequence[I]) -> list[R]:
        """Run ``items`` as one batch now: the idle path, no queue and no drain task."""
        loop = asyncio.get_running_loop()
        done = self._direct[key] = loop.create_future()
        self._inflight += 1
        work = loop.run_in_executor(self._executor, self._runner, key, items)

        def finished(_: object) -> None:
            # When the batch really ends, not when its caller gives up: the thread is busy until then.
            self._inflight -= 1
            del self._direct[key]
            done.set_result(None)

        work.add_done_callback(finished)
        try:
            # shield: a timeout or a cancelled caller must not cancel the batch under the callback.
            return list(await asyncio.wait_for(asyncio.shield(work), self._timeout_s))
        except TimeoutError:
            raise TimedOut(f"inference did not finish within {self._timeout_s:g} s") from None

    async def _drain(self, key: Hashable, queue: asyncio.Queue[tuple[I, asyncio.Future[R]]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            direct = self._direct.get(key)
            if direct is not None:
                # One batch per key at a time: what queued behind a direct batch goes together.
                await direct
            if self._wait_s and self._inflight and queue.qsize() < self._max_batch - 1:
                # The inference threads are busy: this batch would queue behind
                # another anyway, so let it fill for a moment.
                await asyncio.sleep(self._wait_s)
            while len(batch) < self._max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            # Requests that timed out while queued are dropped, not computed.
            live = [(item, fut) for item, fut in batch if not fut.done()]
            self._pending -= len(batch)
            if not live:
                continue
            items = [item for item, _ in live]
            self._inflight += 1
            try:
                results = await loop.run_in_executor(self._executor, self._runner, key, items)
            except Exception as exc:
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            finally:
                self._inflight -= 1
            for (_, fut), result in zip(live, results, strict=True):
                if not fut.done():
                    fut.set_result(result)

    @property
    def inflight(self) -> int:
        """Batches running in the executor now."""
        return self._inflight

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._queues.clear()
