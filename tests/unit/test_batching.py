"""The micro-batcher groups concurrent requests and never loses one."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from evaluators.errors import Overloaded, TimedOut
from service.batching import MicroBatcher


class RecordingRunner:
    """Doubles each item; records batches. Raises if given an empty batch (a batcher bug)."""

    def __init__(self, delay_s: float = 0.02) -> None:
        self.calls: list[tuple[Hashable, list[int]]] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, key: Hashable, items: Sequence[int]) -> list[int]:
        if not items:
            raise AssertionError("runner called with an empty batch")
        time.sleep(self.delay_s)
        with self.lock:
            self.calls.append((key, list(items)))
        return [i * 2 for i in items]


@pytest.fixture
def executor() -> ThreadPoolExecutor:
    ex = ThreadPoolExecutor(max_workers=1)
    yield ex  # type: ignore[misc]
    ex.shutdown(wait=True)


def test_concurrent_requests_share_batches(executor: ThreadPoolExecutor) -> None:
    runner = RecordingRunner()

    async def main() -> list[int]:
        batcher: MicroBatcher[int, int] = MicroBatcher(runner, executor, max_batch=16, wait_ms=5)
        try:
            return await asyncio.gather(*(batcher.submit("k", i) for i in range(40)))
        finally:
            await batcher.close()

    results = asyncio.run(main())
    assert results == [i * 2 for i in range(40)]
    sizes = [len(items) for _, items in runner.calls]
    assert sum(sizes) == 40
    assert max(sizes) <= 16
    assert len(runner.calls) < 40 / 2, f"expected batching, got sizes {sizes}"


def test_keys_are_not_mixed(executor: ThreadPoolExecutor) -> None:
    runner = RecordingRunner(delay_s=0.005)

    async def main() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(runner, executor, max_batch=8)
        try:
            await asyncio.gather(
                *(batcher.submit(("p", "input"), i) for i in range(10)),
                *(batcher.submit(("p", "output"), 100 + i) for i in range(10)),
            )
        finally:
            await batcher.close()

    asyncio.run(main())
    for key, items in runner.calls:
        if key == ("p", "input"):
            assert all(i < 100 for i in items)
        else:
            assert all(i >= 100 for i in items)


def test_runner_error_reaches_every_caller(executor: ThreadPoolExecutor) -> None:
    def broken(key: Hashable, items: Sequence[int]) -> list[int]:
        raise ValueError("model exploded")

    async def main() -> list[BaseException | int]:
        batcher: MicroBatcher[int, int] = MicroBatcher(broken, executor)
        try:
            return await asyncio.gather(*(batcher.submit("k", i) for i in range(5)), return_exceptions=True)
        finally:
            await batcher.close()

    results = asyncio.run(main())
    assert len(results) == 5
    assert all(isinstance(r, ValueError) for r in results)


def test_timeout_is_timed_out_and_batcher_keeps_serving(executor: ThreadPoolExecutor) -> None:
    runner = RecordingRunner(delay_s=0.3)

    async def main() -> int:
        batcher: MicroBatcher[int, int] = MicroBatcher(runner, executor, timeout_s=0.05)
        try:
            with pytest.raises(TimedOut):
                await batcher.submit("k", 1)
            batcher._timeout_s = 5.0
            return await batcher.submit("k", 2)
        finally:
            await batcher.close()

    assert asyncio.run(main()) == 4


def test_queue_bound_rejects_with_overloaded(executor: ThreadPoolExecutor) -> None:
    runner = RecordingRunner(delay_s=0.05)

    async def main() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(runner, executor, max_pending=3)
        try:
            with pytest.raises(Overloaded):
                await batcher.submit_many("k", [1, 2, 3, 4])
            assert await batcher.submit_many("k", [1, 2, 3]) == [2, 4, 6]
        finally:
            await batcher.close()

    asyncio.run(main())


def test_an_idle_batcher_dispatches_at_once(executor: ThreadPoolExecutor) -> None:
    # A 10 s gathering window: a lone request must not wait for it (nothing is in flight).
    runner = RecordingRunner(delay_s=0.0)

    async def main() -> int:
        batcher: MicroBatcher[int, int] = MicroBatcher(runner, executor, wait_ms=10_000)
        try:
            return await asyncio.wait_for(batcher.submit("k", 21), timeout=5)
        finally:
            await batcher.close()

    assert asyncio.run(main()) == 42
    assert runner.calls == [("k", [21])]


def test_a_busy_executor_lets_a_batch_gather(executor: ThreadPoolExecutor) -> None:
    # Key "a" holds the only inference thread; requests for "b" arriving meanwhile
    # (50 ms apart) wait in the gathering window and go as one batch.
    release = threading.Event()
    calls: list[tuple[Hashable, list[int]]] = []

    def runner(key: Hashable, items: Sequence[int]) -> list[int]:
        if key == "a":
            release.wait(5)
        calls.append((key, list(items)))
        return list(items)

    async def main() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(runner, executor, wait_ms=400)
        try:
            blocker = asyncio.ensure_future(batcher.submit("a", 0))
            await asyncio.sleep(0.05)
            assert batcher.inflight == 1
            first = asyncio.ensure_future(batcher.submit("b", 1))
            await asyncio.sleep(0.05)
            second = asyncio.ensure_future(batcher.submit("b", 2))
            await asyncio.sleep(0.5)
            release.set()
            assert await asyncio.gather(blocker, first, second) == [0, 1, 2]
        finally:
            release.set()
            await batcher.close()

    asyncio.run(main())
    assert ("b", [1, 2]) in calls, calls


def test_requests_behind_a_direct_batch_go_as_one_batch(executor: ThreadPoolExecutor) -> None:
    # The first request finds the batcher idle and runs at once; those arriving while it
    # runs wait for it (one batch per key at a time) and then go together, not one by one.
    runner = RecordingRunner(delay_s=0.1)

    async def main() -> list[int]:
        batcher: MicroBatcher[int, int] = MicroBatcher(runner, executor, wait_ms=0)
        try:
            first = asyncio.ensure_future(batcher.submit("k", 1))
            await asyncio.sleep(0.02)
            assert batcher.inflight == 1
            rest = [asyncio.ensure_future(batcher.submit("k", i)) for i in (2, 3, 4)]
            return list(await asyncio.gather(first, *rest))
        finally:
            await batcher.close()

    assert asyncio.run(main()) == [2, 4, 6, 8]
    assert runner.calls == [("k", [1]), ("k", [2, 3, 4])]


def test_a_timed_out_direct_batch_holds_its_key_until_it_ends(executor: ThreadPoolExecutor) -> None:
    runner = RecordingRunner(delay_s=0.2)

    async def main() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(runner, executor, timeout_s=0.05)
        try:
            with pytest.raises(TimedOut):
                await batcher.submit("k", 1)
            # The thread still runs the batch: it counts as in flight until it ends.
            assert batcher.inflight == 1
            batcher._timeout_s = 5.0
            assert await batcher.submit("k", 2) == 4
            assert batcher.inflight == 0
        finally:
            await batcher.close()

    asyncio.run(main())
    assert runner.calls == [("k", [1]), ("k", [2])]
