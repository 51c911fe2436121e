"""Generation jobs: ``POST /v1/generations``, ``GET``/``DELETE /v1/jobs/{id}``.

Views stay thin: validate, record the job, queue it, read it back. The job
store, not the broker, is the source of truth for a job's status.
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Controller, Response, get, post
from litestar.datastructures import State
from litestar.params import Parameter

from evaluators.contracts import GenerationRequest, Status
from evaluators.errors import NotFound
from service.auth import Principal, requires
from service.jobs import await_job, cancel_job, submit_job
from service.problems import problem
from service.state import AppState
from store.records import JobRecord


def job_links(job_id: str) -> dict[str, str]:
    return {"self": f"/v1/jobs/{job_id}", "cancel": f"/v1/jobs/{job_id}/cancel"}


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
    opt = requires("app")

    @post("/v1/generations", status_code=202, summary="Queue a guarded generation job")
    async def create(
        self,
        data: GenerationRequest,
        state: State,
        principal: Principal,
        wait: float = Parameter(default=0.0, ge=0.0, le=120.0, description="Seconds to wait for the result."),
    ) -> Response[dict[str, Any]]:
        app: AppState = state.assay
        lp = app.policy(data.policy, principal)
        params = lp.policy.generation.resolve(data.params, policy=lp.name)
        job_id = await submit_job(
            app,
            lp,
            data,
            params,
            principal=principal,
            model=data.model,
            context=data.context,
            fairness=data.fairness,
        )
        if wait > 0:
            current = await await_job(app, job_id, wait)
            if current is not None:
                return Response(job_body(current), status_code=200)
        return Response(
            {"id": job_id, "status": Status.QUEUED, "links": job_links(job_id)},
            status_code=202,
            headers={"Location": f"/v1/jobs/{job_id}"},
        )

    @get("/v1/jobs/{job_id:str}", summary="A job's status and result")
    async def show(self, job_id: str, state: State, principal: Principal) -> dict[str, Any]:
        app: AppState = state.assay
        job = await asyncio.to_thread(app.jobs().get, job_id, principal.tenant)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job_body(job)

    @post("/v1/jobs/{job_id:str}/cancel", status_code=200, summary="Cancel a job")
    async def cancel(self, job_id: str, state: State, principal: Principal) -> Response[dict[str, Any]]:
        app: AppState = state.assay
        jobs = app.jobs()
        # Another tenant's job is not found: its existence is not revealed, and it is not cancelled.
        job = await asyncio.to_thread(jobs.get, job_id, principal.tenant)
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
        await cancel_job(app, job_id)
        job = await asyncio.to_thread(jobs.get, job_id)
        assert job is not None
        return Response(job_body(job), status_code=200)
