"""Job leases on a real SQLite store: heartbeats, and the sweep of orphaned jobs (re-queue or fail)."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path

import pytest

from evaluators.contracts import SamplingParams, Status
from store.db import reset_stores
from store.jobs import JobStore, job_store
from workers.leases import Leases, sweep_jobs


class OneShotBroker:
    """Holds the unacked messages of given job ids; redelivering one twice is a bug, so it raises."""

    def __init__(self, held: set[str]) -> None:
        self.held = set(held)
        self.asked: list[set[str]] = []

    def redeliver(self, task_ids: Collection[str]) -> set[str]:
        wanted = set(task_ids)
        self.asked.append(wanted)
        found = wanted & self.held
        self.held -= found
        return found


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    yield job_store(f"sqlite:///{tmp_path}/jobs.db")
    reset_stores()


def _running(store: JobStore, job_id: str, worker: str = "dead:1") -> None:
    store.create(
        job_id=job_id, model="m", queue="q", policy_name="default", policy_sha256="a" * 64,
        prompt_sha256="b" * 64, params=SamplingParams(),
    )  # fmt: skip
    assert store.claim(job_id, worker, lease_s=60)


def test_sweep_requeues_what_the_broker_holds_and_fails_the_rest_once(store: JobStore) -> None:
    for job_id in ("held", "gone", "live"):
        _running(store, job_id)
    broker = OneShotBroker({"held"})
    # lease -1: every heartbeat so far is too old, as if the worker died a lease ago.
    report = sweep_jobs(store, broker, lease_s=-1, max_attempts=3)
    assert sorted(report.requeued) == ["held"] and sorted(report.failed) == ["gone", "live"]
    assert broker.asked == [{"held", "gone", "live"}]
    held, gone = store.get("held"), store.get("gone")
    assert held is not None and held.status == Status.QUEUED and held.worker is None
    assert gone is not None and gone.status == Status.FAILED and gone.error is not None
    assert gone.error.code == "worker-lost" and "submit it again" in (gone.error.detail or "")
    # A second sweep finds nothing new: each outcome is recorded once.
    assert sweep_jobs(store, broker, lease_s=-1, max_attempts=3).as_dict() == {"requeued": 0, "failed": 0}


def test_sweep_leaves_live_leases_and_stops_retrying_a_job_that_kills_workers(store: JobStore) -> None:
    _running(store, "fresh")
    assert sweep_jobs(store, OneShotBroker({"fresh"}), lease_s=60, max_attempts=3).as_dict() == {
        "requeued": 0,
        "failed": 0,
    }
    assert store.cancel("fresh")
    _running(store, "poison")
    for n in range(2):  # two more runs, each lost: attempts 2 and 3
        assert store.claim("poison", f"dead:{n + 2}", lease_s=-1)
    broker = OneShotBroker({"poison"})
    report = sweep_jobs(store, broker, lease_s=-1, max_attempts=3)
    # Not offered to the broker at all: a job that ran out of attempts is failed.
    assert report.failed == ["poison"] and broker.asked == []
    poison = store.get("poison")
    assert poison is not None and poison.status == Status.FAILED and poison.error is not None
    assert "each of its 3 runs" in (poison.error.detail or "")


def test_heartbeat_renews_only_the_jobs_this_worker_holds(store: JobStore) -> None:
    _running(store, "mine", worker="me:1")
    _running(store, "theirs", worker="them:2")
    leases = Leases(lambda: store, interval_s=3600, worker="me:1")
    before = store.get("mine")
    assert before is not None and before.heartbeat_at is not None
    with leases.holding("mine"):
        assert leases.held() == {"mine"}
        assert leases.beat() == 1
    after = store.get("mine")
    assert after is not None and after.heartbeat_at is not None and after.heartbeat_at > before.heartbeat_at
    assert leases.held() == set() and leases.beat() == 0
    with leases.holding("theirs"):  # a job the store says another worker holds is not renewed
        assert leases.beat() == 0
    leases.stop()
