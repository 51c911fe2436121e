"""Job leases: a worker renews the jobs it runs; a sweep re-queues or fails the jobs of a dead one.

A worker killed mid-job (SIGKILL, OOM, a lost machine) leaves its jobs
``running``. The broker would redeliver them only after its visibility
timeout (an hour), so Assay keeps its own lease in the job store:

- ``Leases`` (one per worker process) renews ``heartbeat_at`` of the jobs the
  process runs every ``heartbeat_interval_s``;
- ``sweep_jobs`` (the ``assay.jobs.sweep`` task, sent by beat every
  ``job_sweep_interval_s``) finds running jobs whose heartbeat is older than
  ``job_lease_s``. Where the broker still holds the job's unacknowledged
  message (Redis), the message goes back to its queue now and the job back to
  ``queued``; any worker then claims it. Where the message is gone (the
  embedded filesystem broker drops it at delivery; a Redis restarted without
  persistence) or the job already ran ``job_max_attempts`` times, the job fails
  with its reason (``worker-lost``).

Outcomes stay recorded once: ``JobStore.finish`` writes only a job that is not
terminal, and ``JobStore.claim`` lets no second worker take a job whose lease
is live.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from evaluators.contracts import JobError
from store.jobs import JobStore

log = logging.getLogger(__name__)


def worker_identity() -> str:
    """This process as a lease holder: host and pid (a threads-pool worker is one process)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Leases:
    """The jobs this process runs, and a daemon thread that renews their lease every ``interval_s``."""

    def __init__(self, store: Callable[[], JobStore], interval_s: float, worker: str | None = None) -> None:
        self._store = store
        self.interval_s = interval_s
        self.worker = worker or worker_identity()
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @contextmanager
    def holding(self, job_id: str) -> Iterator[None]:
        """Renew ``job_id``'s lease for the length of the block."""
        with self._lock:
            self._held.add(job_id)
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="assay-heartbeat", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(job_id)

    def held(self) -> set[str]:
        with self._lock:
            return set(self._held)

    def beat(self) -> int:
        """Renew the leases once; returns how many jobs this process still holds in the store."""
        held = self.held()
        if not held:
            return 0
        kept = self._store().heartbeat(held, self.worker)
        if kept < len(held):
            # The sweep took a job back (this process looked dead for a lease): its outcome
            # is still recorded once, by whichever run finishes first.
            log.warning("%d of %d leases lapsed before this worker renewed them", len(held) - kept, len(held))
        return kept

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception as exc:
                # The database may be down for a moment; the next beat tries again.
                log.warning("heartbeat failed: %s", type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()


class Redeliverer(Protocol):
    """A broker that can put unacknowledged messages of given task ids back on their queues."""

    def redeliver(self, task_ids: Collection[str]) -> set[str]: ...


@dataclass
class RedisRedeliverer:
    """Kombu's Redis transport: unacked messages wait in a hash until acked or restored.

    The hash is read with HSCAN (it holds at most the prefetched messages of
    the live workers, plus those of dead ones); a match is restored with
    kombu's own ``restore_by_tag``, one transaction per message.
    """

    app: Any

    def redeliver(self, task_ids: Collection[str]) -> set[str]:
        wanted = set(task_ids)
        restored: set[str] = set()
        if not wanted:
            return restored
        with self.app.connection_for_write() as conn:
            if conn.transport.driver_type != "redis":
                return restored
            channel = conn.default_channel
            client = channel.client
            found: dict[str, Any] = {}
            for tag, raw in client.hscan_iter(channel.unacked_key):
                try:
                    headers = json.loads(raw)[0].get("headers") or {}
                except (ValueError, AttributeError, IndexError):
                    continue
                task_id = headers.get("id")
                if task_id in wanted and task_id not in found:
                    found[task_id] = tag
            for task_id, tag in found.items():
                channel.qos.restore_by_tag(tag, client)
                restored.add(task_id)
        return restored


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {"requeued": len(self.requeued), "failed": len(self.failed)}


def sweep_jobs(
    store: JobStore, broker: Redeliverer | None, *, lease_s: float, max_attempts: int
) -> SweepReport:
    """Re-queue (message still held by the broker) or fail (message gone, too many runs) orphaned jobs."""
    report = SweepReport()
    stale = store.stale(lease_s)
    if not stale:
        return report
    retry = [j.id for j in stale if j.attempts < max_attempts]
    restored = broker.redeliver(retry) if broker is not None and retry else set()
    for job in stale:
        if job.id in restored:
            # Back to queued; if a worker claimed the restored message first, this is a no-op.
            store.release(job.id, lease_s)
            report.requeued.append(job.id)
            log.warning("job %s: worker %s lost it; re-queued (attempt %d)", job.id, job.worker, job.attempts)
            continue
        if job.attempts >= max_attempts:
            detail = (
                f"the job's worker stopped during each of its {job.attempts} runs "
                f"(no heartbeat for {lease_s:g} s); it is not run again"
            )
        else:
            detail = (
                f"the job's worker stopped (no heartbeat for {lease_s:g} s) and the queue no longer "
                "holds the job; submit it again"
            )
        error = JobError(code="worker-lost", title="Worker lost", detail=detail)
        if store.fail_stale(job.id, lease_s, error):
            report.failed.append(job.id)
            log.warning("job %s: worker %s lost it; failed (%d runs)", job.id, job.worker, job.attempts)
    return report
