"""Drift on the worker side: the process's recorder and scorer, reports from the store, alerts.

``drift_runtime()`` is built once per process (API or worker) on the configured
store: events go to the store through a bounded recorder, and results are
scored against baseline profiles read from it. ``run_report`` builds a stored
report request (the thin ``assay.drift.report`` task calls it), ``schedule_report``
is what beat runs, and ``send_alert`` POSTs a report's verdict to the webhook
with retries and exponential backoff.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from evaluators.contracts import GenerationJob, JobResult
from evaluators.contracts.drift import (
    BaselineSpec,
    DriftReport,
    DriftReportRecord,
    DriftReportRequest,
    Source,
    Stage,
    TimeRange,
)
from evaluators.drift.profile import BaselineProfile, build_profile
from evaluators.drift.recorder import DriftRecorder
from evaluators.drift.report import Progress, build_report
from evaluators.drift.runtime import DriftRuntime, Observation, ProfileCache, observe_decisions
from evaluators.engine import Decision
from evaluators.errors import InputError, NotFound
from evaluators.models import registry, shared_model
from evaluators.policy import LoadedPolicy, PolicyStore
from store.drift import DriftStore, drift_store
from workers.settings import WorkerSettings, period_seconds, worker_settings

log = logging.getLogger(__name__)


def store(settings: WorkerSettings | None = None) -> DriftStore:
    return drift_store((settings or worker_settings()).resolved_database_url())


def profile_loader(settings: WorkerSettings) -> Callable[[LoadedPolicy, str], BaselineProfile | None]:
    def load(lp: LoadedPolicy, model: str) -> BaselineProfile | None:
        repo = store(settings)
        baseline = repo.current_baseline(lp.name, model, lp.policy.drift.baseline)
        if baseline is None:
            return None
        merged = repo.sketches(
            lp.name, window=baseline.spec().window(), run_id=baseline.audit or "", model=baseline.model
        )
        return build_profile(baseline.name, merged)

    return load


def build_runtime(settings: WorkerSettings) -> DriftRuntime:
    """A recorder on the store and a profile cache: what one process needs for drift."""
    recorder = DriftRecorder(
        lambda batch: store(settings).write(batch),
        capacity=settings.drift_buffer,
        batch=settings.drift_batch,
        interval_s=settings.drift_flush_interval_s,
    )
    return DriftRuntime(recorder, ProfileCache(profile_loader(settings), settings.drift_profile_ttl_s))


def _runtime_key(settings: WorkerSettings) -> str:
    return f"drift:{settings.resolved_database_url()}"


def drift_runtime() -> DriftRuntime:
    """This process's drift runtime, built once (in the model registry)."""
    settings = worker_settings()
    return shared_model(_runtime_key(settings), lambda: build_runtime(settings))


def built_runtime() -> DriftRuntime | None:
    """This process's drift runtime if something built it already, else None (never builds one)."""
    if _runtime_key(worker_settings()) in registry().loaded_keys():
        return drift_runtime()
    return None


def close_runtime() -> None:
    """Write what the process's recorder holds (at worker shutdown); nothing when it was never built."""
    if _runtime_key(worker_settings()) in registry().loaded_keys():
        drift_runtime().close()


def annotate_jobs(
    lp: LoadedPolicy,
    jobs: Sequence[GenerationJob],
    inputs: Sequence[Sequence[Decision]],
    outputs: dict[int, tuple[str, Decision]],
    results: Sequence[JobResult],
) -> list[JobResult]:
    """Record each job's input (and output) event; each result gets its output's drift (or its prompt's)."""
    items: list[Observation] = []
    where: list[tuple[int, int | None]] = []  # per job: its input item, its output item
    for i, job in enumerate(jobs):
        source: Source = "audit" if job.audit_run else "generation"
        tags = {"model": job.model, "run_id": job.audit_run or ""}
        items.append(observe_decisions(job.user_texts(), inputs[i], "input", source, **tags))
        output_at = None
        if i in outputs:
            text, decision = outputs[i]
            items.append(observe_decisions([text], [decision], "output", source, **tags))
            output_at = len(items) - 1
        where.append((len(items) - 1 if output_at is None else output_at - 1, output_at))
    try:
        scores = drift_runtime().observe(lp, items)
    except Exception:
        # Drift is an observer: it never fails a job.
        log.exception("drift: jobs of policy %s not observed", lp.name)
        return list(results)
    out = []
    for (input_at, output_at), result in zip(where, results, strict=True):
        drift = scores[output_at] if output_at is not None else scores[input_at]
        out.append(result.model_copy(update={"drift": drift}))
    return out


def observe_moderation(
    runtime: DriftRuntime, lp: LoadedPolicy, stage: Stage, texts: Sequence[str], decisions: Sequence[Decision]
) -> None:
    """Record one event per moderated text and set each decision's ``drift``; never raises."""
    items = [observe_decisions([t], [d], stage, "moderation") for t, d in zip(texts, decisions, strict=True)]
    try:
        scores = runtime.observe(lp, items)
    except Exception:
        log.exception("drift: moderation under policy %s not observed", lp.name)
        return
    for decision, score in zip(decisions, scores, strict=True):
        decision.drift = score


# --------------------------------------------------------------------------- reports


def _resolve_baseline(
    repo: DriftStore, lp: LoadedPolicy, request: DriftReportRequest
) -> tuple[BaselineSpec, dict[str, Any], str | None]:
    """The baseline to read, how the report names it, and the model filter it implies."""
    spec = request.baseline
    model = request.model
    info: dict[str, Any] = {}
    if spec is None or spec.name is not None:
        baseline = repo.current_baseline(
            lp.name, request.model or "", spec.name if spec is not None else lp.policy.drift.baseline
        )
        if baseline is None:
            if spec is not None:
                raise NotFound(f"policy {lp.name!r} has no baseline named {spec.name!r}")
            # Like a named baseline that is missing: the resource the request relies on is absent.
            raise NotFound(
                f"policy {lp.name!r} has no drift baseline: name one, give {{from, to}} or {{audit}}, "
                "or create one with POST /v1/drift/baselines"
            )
        info["name"] = baseline.name
        model = model or baseline.model
        spec = baseline.spec()
    if spec.audit is not None:
        info["audit"] = spec.audit
    else:
        window = spec.window()
        assert window is not None  # BaselineSpec guarantees one kind
        info.update(window.wire())
    return spec, info, model


def check_request(repo: DriftStore, policies: PolicyStore, request: DriftReportRequest) -> None:
    """Raise the 4xx a request deserves (unknown policy or baseline) before it is queued."""
    _resolve_baseline(repo, policies.get(request.policy), request)


def build_stored_report(
    repo: DriftStore,
    policies: PolicyStore,
    record: DriftReportRecord,
    *,
    progress: Progress | None = None,
) -> DriftReport:
    request = record.request
    lp = policies.get(request.policy)
    spec, baseline_info, baseline_model = _resolve_baseline(repo, lp, request)
    if progress:
        progress(f"reading sketches of policy {lp.name}")
    baseline = repo.sketches(
        lp.name,
        window=spec.window(),
        run_id=spec.audit or "",
        model=baseline_model if spec.audit is None else None,
    )
    window = repo.sketches(lp.name, window=request.window, model=request.model)
    return build_report(
        report_id=record.id,
        policy_name=lp.name,
        policy=lp.policy.drift,
        baseline=baseline,
        window=window,
        baseline_info=baseline_info,
        window_info=request.window.wire(),
        model=request.model,
        trigger=record.trigger,
        progress=progress,
    )


def run_report(
    report_id: str,
    policies: PolicyStore,
    settings: WorkerSettings | None = None,
    *,
    progress: Progress | None = None,
) -> DriftReportRecord | None:
    """Build the stored request ``report_id``, store the report (or the failure), then alert."""
    settings = settings or worker_settings()
    repo = store(settings)
    record = repo.report(report_id)
    if record is None or not repo.mark_report_running(report_id):
        return record
    try:
        report = build_stored_report(repo, policies, record, progress=progress)
    except Exception as exc:
        detail = exc.detail if isinstance(exc, InputError | NotFound) else f"{type(exc).__name__}: {exc}"
        repo.fail_report(report_id, detail)
        log.warning("drift report %s failed: %s", report_id, type(exc).__name__)
        return repo.report(report_id)
    repo.finish_report(report_id, report)
    if report.verdict == "drift" and settings.drift_webhook_url:
        repo.set_alert(report_id, send_alert(report, settings))
    return repo.report(report_id)


def scheduled_window(period: str, now: dt.datetime) -> TimeRange:
    """The window a scheduled report covers: the last whole hour or day, or the last N seconds."""
    seconds = period_seconds(period)
    if period in ("hourly", "daily"):
        end = now.replace(minute=0, second=0, microsecond=0)
        if period == "daily":
            end = end.replace(hour=0)
        return TimeRange.of(end - dt.timedelta(seconds=seconds), end)
    return TimeRange.of(now - dt.timedelta(seconds=seconds), now)


def schedule_report(
    policy: str, period: str, policies: PolicyStore, settings: WorkerSettings | None = None
) -> str:
    """Beat's report: the last period against the policy's current baseline (else the period before)."""
    settings = settings or worker_settings()
    repo = store(settings)
    lp = policies.get(policy)
    window = scheduled_window(period, dt.datetime.now(dt.UTC))
    baseline = repo.current_baseline(lp.name, "", lp.policy.drift.baseline)
    if baseline is not None:
        spec = BaselineSpec(name=baseline.name)
    else:
        length = window.end - window.start
        spec = BaselineSpec.model_validate({"from": window.start - length, "to": window.start})
    request = DriftReportRequest(policy=lp.name, baseline=spec, window=window)
    report_id = uuid.uuid4().hex
    repo.create_report(report_id, request, "schedule")
    record = run_report(report_id, policies, settings)
    return record.status if record is not None else "missing"


# --------------------------------------------------------------------------- alerts


def alert_body(report: DriftReport) -> dict[str, Any]:
    """What the webhook receives: the verdict and what drifted, with links; no event data."""
    return {
        "type": "assay.drift.report",
        "report_id": report.id,
        "policy": report.policy,
        "model": report.model,
        "verdict": report.verdict,
        "drifted": list(report.drifted),
        "window": report.window,
        "baseline": report.baseline,
        "links": {
            "json": f"/v1/drift/reports/{report.id}?format=json",
            "html": f"/v1/drift/reports/{report.id}?format=html",
        },
    }


def send_alert(
    report: DriftReport, settings: WorkerSettings, *, sleep: Callable[[float], None] = time.sleep
) -> dict[str, Any]:
    """POST the alert; retry connection errors, 429 and 5xx with exponential backoff. Returns the outcome."""
    body = alert_body(report)
    attempts = settings.drift_webhook_retries + 1
    last = ""
    for attempt in range(1, attempts + 1):
        try:
            r = httpx.post(settings.drift_webhook_url, json=body, timeout=10.0)
            if r.status_code < 300:
                return {"delivered": True, "attempts": attempt, "status": r.status_code}
            last = f"HTTP {r.status_code}"
            if r.status_code != 429 and r.status_code < 500:
                break  # the receiver refused it; sending again will not help
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        if attempt < attempts:
            sleep(settings.drift_webhook_backoff_s * 2 ** (attempt - 1))
    log.warning("drift alert for report %s not delivered: %s", report.id, last)
    return {"delivered": False, "attempts": attempt, "error": last}
