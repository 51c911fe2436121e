"""Audit runs: fan a suite out as chunks, record each item once, finalize once.

Orchestration only, over two ports the caller supplies: a repository (the
store: ``store.audits.AuditStore`` satisfies ``AuditRepository``) and a way to
run a batch of generation jobs (the worker's guarded pipeline). The Celery
tasks and the embedded CLI build an ``AuditRunner`` from the same parts.

Idempotence carries the guarantees: a chunk skips items that already have a
result, a result row is unique per (run, key), and the run's outcome is
recorded by whichever chunk completes it first. So a chunk may be delivered
twice (a worker died, the broker redelivered, the sweeper re-sent it) and
every item still counts exactly once.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from evaluators.audit.aggregate import aggregate, item_result
from evaluators.audit.gates import evaluate_gates
from evaluators.audit.record import build_run_record
from evaluators.audit.suites import LoadedSuite, parse_suite
from evaluators.contracts import (
    DEFAULT_TENANT,
    AuditItem,
    AuditItemResult,
    AuditRun,
    GenerationJob,
    JobResult,
    ModelInfo,
    PolicyIdentity,
    SamplingParams,
    Status,
)
from evaluators.errors import InputError
from evaluators.policy import LoadedPolicy, PolicyStore

log = logging.getLogger(__name__)

RunBatch = Callable[[list[GenerationJob]], list[JobResult]]
"""Runs jobs of one policy together and returns their results in order."""
Enqueue = Callable[[str, list[str]], None]
"""Queues one chunk (run id, item keys) for some worker."""


class AuditRepository(Protocol):
    """What the runner needs from the store."""

    def create_run(
        self,
        *,
        run_id: str,
        suite_name: str,
        suite_sha256: str,
        suite: dict[str, Any],
        model: str,
        queue: str,
        policy: PolicyIdentity,
        policy_text: str,
        params: SamplingParams,
        samples_per_prompt: int,
        total: int,
        tenant: str = DEFAULT_TENANT,
    ) -> AuditRun: ...
    def get_run(self, run_id: str, tenant: str | None = None) -> AuditRun | None: ...
    def mark_started(self, run_id: str) -> bool: ...
    def done_keys(self, run_id: str) -> set[str]: ...
    def add_result(
        self, run_id: str, result: AuditItemResult, *, status: Status, worker: str | None
    ) -> int: ...
    def record_model(self, run_id: str, info: ModelInfo) -> None: ...
    def count_results(self, run_id: str) -> int: ...
    def results(self, run_id: str) -> list[AuditItemResult]: ...
    def finish_run(
        self, run_id: str, status: Status, *, report: dict[str, Any] | None = None, error: Any = None
    ) -> bool: ...
    def stalled_runs(self, older_than_s: float) -> list[str]: ...


def work_items(run: AuditRun) -> list[AuditItem]:
    """The run's work items, expanded from the stored suite (stable keys)."""
    return parse_suite(run.suite, file=f"<audit {run.id}>").expand(run.samples_per_prompt)


def chunks(keys: Sequence[str], size: int) -> list[list[str]]:
    return [list(keys[i : i + size]) for i in range(0, len(keys), size)]


class AuditRunner:
    """Starts, runs, sweeps and finalizes audit runs stored in ``repo``."""

    def __init__(self, repo: AuditRepository, run_batch: RunBatch, policies: PolicyStore) -> None:
        self.repo = repo
        self.run_batch = run_batch
        self.policies = policies

    def create(
        self,
        lp: LoadedPolicy,
        suite: LoadedSuite,
        *,
        model: str,
        queue: str,
        params: SamplingParams,
        samples_per_prompt: int,
        tenant: str = DEFAULT_TENANT,
    ) -> AuditRun:
        """Record a new queued run of ``suite`` under ``lp`` (and the policy version, by sha256).

        ``tenant`` owns the run: only its keys see it.
        """
        items = suite.expand(samples_per_prompt)
        if not items:
            raise InputError("the suite has no items")
        return self.repo.create_run(
            run_id=uuid.uuid4().hex,
            suite_name=suite.name,
            suite_sha256=suite.sha256,
            suite=suite.suite.model_dump(mode="json"),
            model=model,
            queue=queue,
            policy=PolicyIdentity(**lp.identity()),
            policy_text=lp.path.read_text("utf-8"),
            params=params,
            samples_per_prompt=samples_per_prompt,
            total=len(items),
            tenant=tenant,
        )

    def start(self, run_id: str, enqueue: Enqueue, chunk_size: int) -> int:
        """Mark the run started and enqueue a chunk for every item without a result."""
        run = self.repo.get_run(run_id)
        if run is None or not self.repo.mark_started(run_id):
            return 0
        return self.enqueue_pending(run, enqueue, chunk_size)

    def enqueue_pending(self, run: AuditRun, enqueue: Enqueue, chunk_size: int) -> int:
        """Enqueue chunks of the items that have no result yet; finalize when none is left."""
        done = self.repo.done_keys(run.id)
        pending = [w.key for w in work_items(run) if w.key not in done]
        for chunk in chunks(pending, chunk_size):
            enqueue(run.id, chunk)
        if not pending:
            self.maybe_finalize(run.id)
        return len(pending)

    def run_chunk(self, run_id: str, keys: Sequence[str], worker: str | None = None) -> int:
        """Run the chunk's items that have no result yet; return how many were written."""
        run = self.repo.get_run(run_id)
        if run is None or run.status != Status.RUNNING:
            return 0
        wanted = set(keys) - self.repo.done_keys(run_id)
        items = [w for w in work_items(run) if w.key in wanted]
        if not items:
            self.maybe_finalize(run_id)
            return 0
        written = 0
        jobs = [
            w.job(policy=run.policy_name, model=run.model, params=run.params).model_copy(
                update={"audit_run": run.id}
            )
            for w in items
        ]
        try:
            results = self.run_batch(jobs)
        except Exception as exc:
            # Items that cannot run are recorded as errors, so the run still finishes.
            log.exception("audit %s: chunk of %d failed", run_id, len(items))
            error = f"{type(exc).__name__}: {exc}"
            for w in items:
                written += self.repo.add_result(
                    run_id, item_result(w, None, error=error), status=Status.FAILED, worker=worker
                )
        else:
            for w, result in zip(items, results, strict=True):
                if result.model.revision:
                    self.repo.record_model(run_id, result.model)
                written += self.repo.add_result(
                    run_id, item_result(w, result), status=Status.SUCCEEDED, worker=worker
                )
        self.maybe_finalize(run_id)
        return written

    def record(self, run: AuditRun, results: list[AuditItemResult], *, status: str) -> dict[str, Any]:
        """The run record (metrics, gates, verdict) from the results so far; partial while running."""
        lp = self.policies.get(run.policy_name)
        metrics = aggregate(results, output_checks=[c.check for c in lp.policy.checks("output")])
        gates = evaluate_gates(lp.policy.parsed_gates(), metrics.metrics)
        finished = run.finished_at or dt.datetime.now(dt.UTC)
        return build_run_record(
            run_id=run.id,
            suite=parse_suite(run.suite, file=f"<audit {run.id}>"),
            audit=metrics,
            gates=gates,
            model=(run.model_info or ModelInfo(id=run.model)).model_dump(mode="json"),
            policy={"name": lp.name, "version": lp.policy.version, "sha256": run.policy_sha256},
            params=run.params.model_dump(mode="json"),
            samples_per_prompt=run.samples_per_prompt,
            status=status,
            created_at=run.created_at,
            finished_at=finished if status == "finished" else None,
            progress={"done": len(results), "total": run.total},
        )

    def maybe_finalize(self, run_id: str) -> bool:
        """Finish the run when every item has a result; only the first caller records it."""
        run = self.repo.get_run(run_id)
        if run is None or run.status != Status.RUNNING:
            return False
        if self.repo.count_results(run_id) < run.total:
            return False
        record = self.record(run, self.repo.results(run_id), status="finished")
        return self.repo.finish_run(run_id, Status.SUCCEEDED, report=record)

    def sweep(self, enqueue: Enqueue, chunk_size: int, stalled_after_s: float) -> dict[str, int]:
        """Re-enqueue the missing items of runs that made no progress for ``stalled_after_s``."""
        resent: dict[str, int] = {}
        for run_id in self.repo.stalled_runs(stalled_after_s):
            run = self.repo.get_run(run_id)
            if run is None:
                continue
            pending = self.enqueue_pending(run, enqueue, chunk_size)
            if pending:
                resent[run_id] = pending
        return resent

    def cancel(self, run_id: str) -> bool:
        return self.repo.finish_run(run_id, Status.CANCELLED, error={"reason": "cancelled by request"})
