"""The job done signal over a real Redis: the API's wait wakes when the worker says so."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from workers.settings import WorkerSettings
from workers.streams import signal_done, wait_done


def _settings(broker_url: str, tmp_path: Path) -> WorkerSettings:
    return WorkerSettings(broker_url=broker_url, data_dir=tmp_path)


def test_a_signal_wakes_every_waiter_at_once_even_one_that_came_late(redis_url: str, tmp_path: Path) -> None:
    settings, job = _settings(redis_url, tmp_path), uuid.uuid4().hex

    async def scenario() -> tuple[bool | None, bool | None, float, bool | None]:
        first = asyncio.create_task(wait_done(settings, job, 10.0))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await asyncio.to_thread(signal_done, settings, job)
        woke = await first
        waited = time.monotonic() - started
        late = await wait_done(settings, job, 10.0)  # after the signal: still sees it
        other = await wait_done(settings, uuid.uuid4().hex, 0.2)  # no signal: times out
        return woke, late, waited, other

    woke, late, waited, other = asyncio.run(scenario())
    assert woke is True and late is True and other is False
    assert waited < 5.0  # woken by the signal, not by the 10 s timeout


def test_without_redis_there_is_no_signal_and_callers_poll(tmp_path: Path) -> None:
    settings = _settings("", tmp_path)
    signal_done(settings, "abc")  # a no-op, not an error
    assert asyncio.run(wait_done(settings, "abc", 0.1)) is None
