"""Queue a guarded generation job and wait for its outcome: one path for every route that generates.

``POST /v1/generations`` and the OpenAI-compatible routes record the job with
the job store (before it is queued, so it is never lost silently), send its
``GenerationJob`` to the model's queue, and read the outcome back from the
store, the source of truth for a job's status.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

from evaluators.contracts import FairnessSpec, GenerationJob, JobError, Prompt, SamplingParams, Status
from evaluators.errors import Overloaded, PayloadTooLarge, RateLimited
from evaluators.policy import LoadedPolicy
from service.auth import Principal
from service.backpressure import QUEUE_RETRY_AFTER_S
from service.state import AppState
from store.records import JobRecord
from workers.streams import wait_done
from workers.tracing import annotate, span


def check_quota(app: AppState, principal: Principal) -> None:
    """429 when the tenant already has as many queued and running jobs as its quota allows."""
    if principal.max_active_jobs <= 0:
        return
    active = app.jobs().count_active(principal.tenant)
    if active >= principal.max_active_jobs:
        raise RateLimited(
            f"tenant {principal.tenant!r} has {active} queued or running jobs; its quota is "
            f"{principal.max_active_jobs}",
            quota="max_active_jobs",
            retry_after_s=QUEUE_RETRY_AFTER_S,
        )


async def submit_job(
    app: AppState,
    lp: LoadedPolicy,
    prompt: Prompt,
    params: SamplingParams,
    *,
    principal: Principal,
    model: str | None = None,
    context: tuple[str, ...] | None = None,
    fairness: FairnessSpec | None = None,
    stream: bool = False,
) -> str:
    """Record and queue one job of ``principal``'s tenant under ``lp``; returns its id.

    Over the tenant's job quota: 429; queue deeper than allowed or broker down: 503.
    """
    # A producer span: the task's span in the worker is its child (trace context in the headers).
    attributes: dict[str, str | bool] = {
        "assay.policy": lp.name,
        "assay.tenant": principal.tenant,
        "assay.job.stream": stream,
    }
    with span("assay.job.submit", attributes, kind="producer"):
        return await _submit_job(
            app, lp, prompt, params, principal, model=model, context=context, fairness=fairness, stream=stream
        )


async def _submit_job(
    app: AppState,
    lp: LoadedPolicy,
    prompt: Prompt,
    params: SamplingParams,
    principal: Principal,
    *,
    model: str | None,
    context: tuple[str, ...] | None,
    fairness: FairnessSpec | None,
    stream: bool,
) -> str:
    texts = prompt.texts()
    total = sum(len(t) for t in texts)
    if total > lp.policy.limits.max_chars:
        raise PayloadTooLarge(
            f"prompt has {total} characters; policy {lp.name!r} accepts {lp.policy.limits.max_chars}"
        )
    jobs = app.jobs()
    settings = app.worker_settings
    model = model or settings.default_model
    queue = settings.queue_for(model)
    await asyncio.to_thread(check_quota, app, principal)
    await asyncio.to_thread(app.queue_guard.check, queue)
    job_id = uuid.uuid4().hex
    annotate({"assay.job.id": job_id, "assay.model": model, "assay.queue": queue})
    joined = "\n".join(texts)
    await asyncio.to_thread(
        jobs.create,
        job_id=job_id,
        tenant=principal.tenant,
        model=model,
        queue=queue,
        policy_name=lp.name,
        policy_sha256=lp.sha256,
        prompt_sha256=hashlib.sha256(joined.encode("utf-8")).hexdigest(),
        params=params,
        # Raw prompts are stored only when the policy opts in.
        raw_prompt=joined if lp.policy.store_raw_text else None,
    )
    job = GenerationJob(
        job_id=job_id,
        model=model,
        policy=lp.name,
        prompt=prompt.prompt,
        messages=prompt.messages,
        params=params,
        context=context,
        fairness=fairness,
        stream=stream,
        enqueued_at=time.time(),
    )
    try:
        await asyncio.to_thread(app.enqueue, job, queue)
    except Exception as exc:
        # Record why, so the job is not lost silently, then tell the caller.
        detail = f"could not queue the job: {type(exc).__name__}"
        error = JobError(code="queue-unavailable", detail=detail)
        await asyncio.to_thread(jobs.finish, job_id, Status.FAILED, error=error)
        raise Overloaded(detail, job_id=job_id) from exc
    return job_id


async def await_job(app: AppState, job_id: str, timeout: float) -> JobRecord | None:
    """The job's record once it is terminal, or None after ``timeout`` seconds; never blocks the loop."""
    jobs = app.jobs()
    deadline = time.monotonic() + timeout
    # With Redis the worker's done signal wakes the wait at once; the store is read
    # again at least every second (a sweep or a cancel sends no signal). Without
    # it, poll the store, backing off from 20 to 100 ms: a finished job waited at
    # most a tenth of a second more (it was 500 ms, a quarter second on average).
    pause, signalled = 0.02, False
    while True:
        current = await asyncio.to_thread(jobs.get, job_id)
        if current is not None and current.status.terminal:
            return current
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        # After a signal that left no terminal state (the task is retried), poll once
        # before waiting again: a signal still in the list must not make this spin.
        woke = None if signalled else await wait_done(app.worker_settings, job_id, min(1.0, left))
        if woke is None:  # no signal to wait on (no Redis), or the poll above
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 1.5, 0.1)
        signalled = bool(woke)


async def cancel_job(app: AppState, job_id: str) -> bool:
    """Cancel a job that has not finished (store first, then the broker); False when it had."""
    cancelled = await asyncio.to_thread(app.jobs().cancel, job_id)
    if cancelled:
        await asyncio.to_thread(app.revoke, job_id)
    return cancelled
