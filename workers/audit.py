"""Audit runs: fan a suite out as chunks, record each item once, finalize once.

The Celery tasks in ``workers.tasks`` are thin wrappers over these functions.
Idempotence carries the guarantees: a chunk skips items that already have a
result, a result row is unique per (run, key), and the run's outcome is
recorded by whichever chunk completes it first. So a chunk may be delivered
twice (a worker died, the broker redelivered, the sweeper re-sent it) and
every item still counts exactly once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from evaluators.aggregate import ItemResult
from evaluators.contracts import Status
from evaluators.policy import LoadedPolicy
from store.audits import AuditStore
from store.db import database
from store.models import as_utc, utcnow
from store.records import AuditResultRecord, AuditRunRecord, PolicyVersion
from workers.pipeline import guarded_batch
from workers.settings import WorkerSettings, worker_settings

log = logging.getLogger(__name__)


def audit_store(settings: WorkerSettings | None = None) -> AuditStore:
    settings = settings or worker_settings()
    return AuditStore(database(settings.resolved_database_url()))


def create_run(
    lp: LoadedPolicy, suite: Any, *, model: str, queue: str, params: dict[str, Any], samples_per_prompt: int
) -> AuditRunRecord:
    """Record a new queued run of ``suite`` under ``lp`` (and the policy version, by sha256)."""
    policy = PolicyVersion(
        sha256=lp.sha256, name=lp.name, version=lp.policy.version, content=lp.path.read_text("utf-8")
    )
    return audit_store().create_run(
        run_id=uuid.uuid4().hex,
        suite_name=suite.suite.name,
        suite_sha256=suite.sha256,
        suite=suite.suite.model_dump(mode="json"),
        model=model,
        queue=queue,
        policy=policy,
        params=params,
        samples_per_prompt=samples_per_prompt,
        total=len(suite.expand(samples_per_prompt)),
    )


def work_items(run: AuditRunRecord) -> list[Any]:
    """The run's work items, expanded from the stored suite (stable keys)."""
    from evaluators.suites import parse_suite

    loaded = parse_suite(run.suite, file=f"<audit {run.id}>")
    return list(loaded.expand(run.samples_per_prompt))


def chunks(keys: list[str], size: int) -> list[list[str]]:
    return [keys[i : i + size] for i in range(0, len(keys), size)]


def start_run(run_id: str, enqueue: Callable[[str, list[str]], None], chunk_size: int) -> int:
    """Mark the run started and enqueue a chunk task for every item without a result."""
    store = audit_store()
    run = store.get_run(run_id)
    if run is None or not store.mark_started(run_id):
        return 0
    return enqueue_pending(store, run, enqueue, chunk_size)


def enqueue_pending(
    store: AuditStore, run: AuditRunRecord, enqueue: Callable[[str, list[str]], None], chunk_size: int
) -> int:
    """Enqueue chunks of the items that have no result yet; finalize when none is left."""
    done = store.done_keys(run.id)
    pending = [w.key for w in work_items(run) if w.key not in done]
    for chunk in chunks(pending, chunk_size):
        enqueue(run.id, chunk)
    if not pending:
        maybe_finalize(run.id)
    return len(pending)


def _payload(run: AuditRunRecord, item: Any) -> dict[str, Any]:
    params = dict(run.params or {})
    if params.get("seed") is not None:
        # Each sample of an item gets its own reproducible seed.
        params["seed"] = int(params["seed"]) + int(item.sample)
    context = list(item.context or [])
    if not context and item.reference:
        context = [item.reference]
    return {
        "policy": run.policy_name,
        "model": run.model,
        **item.request(),
        "params": params,
        "context": context or None,
    }


def run_chunk(run_id: str, keys: list[str], worker: str | None = None) -> int:
    """Run the chunk's items that have no result yet; return how many were written."""
    store = audit_store()
    run = store.get_run(run_id)
    if run is None or run.status != Status.RUNNING:
        return 0
    done = store.done_keys(run_id)
    wanted = set(keys) - done
    items = [w for w in work_items(run) if w.key in wanted]
    if not items:
        maybe_finalize(run_id)
        return 0
    written = 0
    try:
        results = guarded_batch([_payload(run, w) for w in items])
    except Exception as exc:
        # Items that cannot run are recorded as errors, so the run still finishes.
        log.exception("audit %s: chunk of %d failed", run_id, len(items))
        for w in items:
            record = ItemResult.from_generation(w, None, error=f"{type(exc).__name__}: {exc}").to_dict()
            written += store.add_result(
                run_id, key=w.key, item_id=w.item_id, category=w.category, group=w.group,
                status=Status.FAILED, result=record, worker=worker,
            )  # fmt: skip
    else:
        for w, result in zip(items, results, strict=True):
            if result.get("model", {}).get("revision"):
                store.record_model(run_id, result["model"])
            written += store.add_result(
                run_id, key=w.key, item_id=w.item_id, category=w.category, group=w.group,
                status=Status.SUCCEEDED, result=ItemResult.from_generation(w, result).to_dict(),
                worker=worker,
            )  # fmt: skip
    maybe_finalize(run_id)
    return written


def run_record(run: AuditRunRecord, results: list[AuditResultRecord], *, status: str) -> dict[str, Any]:
    """The run record (metrics, gates, verdict) from the results so far; partial while running."""
    from evaluators.aggregate import ItemResult, aggregate
    from evaluators.gates import evaluate_gates
    from evaluators.report_record import build_run_record
    from evaluators.suites import parse_suite
    from workers.pipeline import worker_policies

    lp = worker_policies().get(run.policy_name)
    items = [ItemResult.from_dict(r.result) for r in results]
    metrics = aggregate(items, output_checks=[c.check for c in lp.policy.checks("output")])
    gates = evaluate_gates(lp.policy.parsed_gates(), metrics.metrics)
    return build_run_record(
        run_id=run.id,
        suite=parse_suite(run.suite, file=f"<audit {run.id}>"),
        audit=metrics,
        gates=gates,
        model=run.model_info or {"id": run.model},
        policy={"name": lp.name, "version": lp.policy.version, "sha256": run.policy_sha256},
        params=run.params,
        samples_per_prompt=run.samples_per_prompt,
        status=status,
        created_at=run.created_at,
        finished_at=utcnow() if status == "finished" else None,
        progress={"done": len(results), "total": run.total},
    )


def maybe_finalize(run_id: str) -> bool:
    """Finish the run when every item has a result; only the first caller records it."""
    store = audit_store()
    run = store.get_run(run_id)
    if run is None or run.status != Status.RUNNING:
        return False
    if store.count_results(run_id) < run.total:
        return False
    record = run_record(run, store.results(run_id), status="finished")
    return store.finish_run(run_id, Status.SUCCEEDED, report=record)


def run_to_dict(run: AuditRunRecord) -> dict[str, Any]:
    return {
        "id": run.id,
        "status": run.status,
        "suite": {"name": run.suite_name, "sha256": run.suite_sha256, "version": run.suite.get("version")},
        "model": run.model_info or {"id": run.model},
        "policy": {"name": run.policy_name, "sha256": run.policy_sha256},
        "params": run.params,
        "samples_per_prompt": run.samples_per_prompt,
        "total": run.total,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def sweep(
    enqueue: Callable[[str, list[str]], None], chunk_size: int, stalled_after_s: float
) -> dict[str, int]:
    """Re-enqueue the missing items of runs that made no progress for ``stalled_after_s``."""
    store = audit_store()
    resent: dict[str, int] = {}
    for run_id in store.stalled_runs(stalled_after_s):
        run = store.get_run(run_id)
        if run is None:
            continue
        pending = enqueue_pending(store, run, enqueue, chunk_size)
        if pending:
            resent[run_id] = pending
    return resent


def cancel_run(run_id: str) -> bool:
    return audit_store().finish_run(run_id, Status.CANCELLED, error={"reason": "cancelled by request"})


def progress(run: AuditRunRecord, done: int) -> dict[str, Any]:
    started = run.started_at
    elapsed = 0.0
    if started is not None:
        elapsed = max(0.0, (utcnow() - as_utc(started)).total_seconds())
    rate = done / elapsed if elapsed > 0 else 0.0
    remaining = max(0, run.total - done)
    return {
        "done": done,
        "total": run.total,
        "rate_per_min": round(rate * 60, 2),
        "eta_s": round(remaining / rate, 1) if rate > 0 and remaining else (0.0 if not remaining else None),
        "elapsed_s": round(elapsed, 1),
        "at": time.time(),
    }
