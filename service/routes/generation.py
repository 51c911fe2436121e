"""Generation jobs: ``POST /v1/generations``, ``GET``/``DELETE /v1/jobs/{id}``.

Views stay thin: validate, record the job, queue it, read it back. The job
store, not the broker, is the source of truth for a job's status.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from typing import Any

from litestar import Controller, Response, delete, get, post
from litestar.datastructures import State
from litestar.params import Parameter

from evaluators.contracts import GenerationJob, GenerationRequest, JobError, Status
from evaluators.errors import NotFound, Overloaded, PayloadTooLarge
from service.problems import problem
from service.state import AppState
from store.records import JobRecord


def job_links(job_id: str) -> dict[str, str]:
    return {"self": f"/v1/jobs/{job_id}", "cancel": f"/v1/jobs/{job_id}"}


def job_body(job: JobRecord) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": job.id,
        "status": job.status,
        "model": job.model,
        "policy": {"name": job.policy_name, "sha256": job.policy_sha256},
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "attempts": job.attempts,
        "links": job_links(job.id),
    }
    if job.result is not None:
        body["result"] = job.result.to_json()
    if job.error is not None:
        err = job.error
        failed = job.status == Status.FAILED
        body["error"] = {
            "type": f"https://assay.dev/problems/{err.code or 'job-failed'}",
            "title": err.title or ("Job failed" if failed else "Job cancelled"),
            "status": 500 if failed else 409,
            "detail": err.detail or err.reason or "",
        }
    return body


class GenerationController(Controller):
    tags = ["generation"]

    @post("/v1/generations", summary="Queue a guarded generation job")
    async def create(
        self,
        data: GenerationRequest,
        state: State,
        wait: float = Parameter(default=0.0, ge=0.0, le=120.0, description="Seconds to wait for the result."),
    ) -> Response[dict[str, Any]]:
        app: AppState = state.assay
        jobs = app.jobs()
        lp = app.policy(data.policy)
        params = lp.policy.generation.resolve(data.params, policy=lp.name)
        texts = data.texts()
        total = sum(len(t) for t in texts)
        if total > lp.policy.limits.max_chars:
            raise PayloadTooLarge(
                f"prompt has {total} characters; policy {lp.name!r} accepts {lp.policy.limits.max_chars}"
            )
        settings = app.worker_settings
        model = data.model or settings.default_model
        queue = settings.queue_for(model)
        job_id = uuid.uuid4().hex
        joined = "\n".join(texts)
        await asyncio.to_thread(
            jobs.create,
            job_id=job_id,
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
            prompt=data.prompt,
            messages=data.messages,
            params=params,
            context=data.context,
            fairness=data.fairness,
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
        if wait > 0:
            deadline = time.monotonic() + wait
            # Back off from 20 ms to 500 ms: sixteen waiting clients polling every
            # 50 ms cost the API a good share of a core on a small machine.
            pause = 0.02
            while True:
                current = await asyncio.to_thread(jobs.get, job_id)
                if current is not None and current.status.terminal:
                    return Response(job_body(current), status_code=200)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 1.5, 0.5)
        return Response(
            {"id": job_id, "status": Status.QUEUED, "links": job_links(job_id)},
            status_code=202,
            headers={"Location": f"/v1/jobs/{job_id}"},
        )

    @get("/v1/jobs/{job_id:str}", summary="A job's status and result")
    async def show(self, job_id: str, state: State) -> dict[str, Any]:
        app: AppState = state.assay
        job = await asyncio.to_thread(app.jobs().get, job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job_body(job)

    @delete("/v1/jobs/{job_id:str}", status_code=200, summary="Cancel a job")
    async def cancel(self, job_id: str, state: State) -> Response[dict[str, Any]]:
        app: AppState = state.assay
        jobs = app.jobs()
        job = await asyncio.to_thread(jobs.get, job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        if job.status.terminal:
            return problem(
                409,
                "Job already finished",
                f"job {job_id} is {job.status}",
                "job-finished",
                f"/v1/jobs/{job_id}",
            )
        await asyncio.to_thread(jobs.cancel, job_id)
        await asyncio.to_thread(app.revoke, job_id)
        job = await asyncio.to_thread(jobs.get, job_id)
        assert job is not None
        return Response(job_body(job), status_code=200)
