"""Generation jobs: ``POST /v1/generations``, ``GET``/``DELETE /v1/jobs/{id}``.

Views stay thin: validate, record the job, queue it, read it back. The job
store, not the broker, is the source of truth for a job's status.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from typing import Any, Literal

from litestar import Controller, Response, delete, get, post
from litestar.datastructures import State
from litestar.params import Parameter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from evaluators.contracts import Status
from evaluators.errors import NotFound, Overloaded, PayloadTooLarge
from service.problems import problem
from service.state import AppState
from store.records import JobRecord
from workers.params import resolve_params


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"] = Field(description="Who wrote the message.")
    content: str = Field(description="The message text.")


class GenerationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, description="Sampling temperature; 0 is greedy.")
    top_k: int | None = Field(default=None, description="Keep the k most likely tokens; 0 disables.")
    top_p: float | None = Field(default=None, description="Nucleus sampling mass.")
    max_new_tokens: int | None = Field(default=None, description="Most tokens to generate.")
    stop: list[str] | None = Field(default=None, description="Stop sequences, cut from the output.")
    seed: int | None = Field(default=None, description="Seed for reproducible sampling.")
    repetition_penalty: float | None = Field(default=None, description="Penalty on repeated tokens.")


class FairnessRequest(BaseModel):
    """Counterfactual fairness: the prompt's {group} slot filled per group."""

    model_config = ConfigDict(extra="forbid")

    dimension: str | None = Field(default=None, description="gender, race, religion, or your own label.")
    groups: list[str] | None = Field(
        default=None, min_length=2, max_length=12, description="Groups to compare; default per dimension."
    )
    samples_per_group: int | None = Field(
        default=None, ge=1, le=16, description="Generations per group; default from the policy."
    )

    @model_validator(mode="after")
    def _groups_or_dimension(self) -> FairnessRequest:
        if not self.dimension and not self.groups:
            raise ValueError("fairness needs a dimension or groups")
        return self


class GenerationRequestBody(BaseModel):
    """A guarded generation job."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(default=None, description="A plain prompt (wrapped as one user message).")
    messages: list[ChatMessage] | None = Field(default=None, description="Chat messages.")
    model: str | None = Field(default=None, description="Model id or local folder; default smollm2.")
    policy: str = Field(default="default", description="Policy whose checks guard the job.")
    params: GenerationParams = Field(default_factory=GenerationParams, description="Sampling parameters.")
    context: list[str] | None = Field(
        default=None, description="Grounding documents the output is checked against (hallucination)."
    )
    fairness: FairnessRequest | None = Field(
        default=None, description="Generate the prompt's {group} variants and score gaps between groups."
    )

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerationRequestBody:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of prompt or messages")
        if self.messages is not None and not any(m.role == "user" for m in self.messages):
            raise ValueError("messages need at least one user message")
        text = (self.prompt or "") + "".join(m.content for m in self.messages or [])
        if self.fairness is not None and "{group}" not in text:
            raise ValueError("a fairness request needs a {group} slot in its prompt or messages")
        return self


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
        body["result"] = job.result
    if job.error is not None:
        err = job.error
        body["error"] = {
            "type": f"https://assay.dev/problems/{err.get('code', 'job-failed')}",
            "title": err.get("title", "Job failed" if job.status == Status.FAILED else "Job cancelled"),
            "status": 500 if job.status == Status.FAILED else 409,
            "detail": err.get("detail") or err.get("reason", ""),
        }
    return body


class GenerationController(Controller):
    tags = ["generation"]

    @post("/v1/generations", summary="Queue a guarded generation job")
    async def create(
        self,
        data: GenerationRequestBody,
        state: State,
        wait: float = Parameter(default=0.0, ge=0.0, le=120.0, description="Seconds to wait for the result."),
    ) -> Response[dict[str, Any]]:
        app: AppState = state.assay
        jobs = app.jobs()
        lp = app.policy(data.policy)
        params = resolve_params(lp.policy, data.params.model_dump(exclude_none=True))
        texts = [data.prompt] if data.prompt is not None else [m.content for m in data.messages or []]
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
        payload = {
            "job_id": job_id,
            "model": model,
            "policy": lp.name,
            "prompt": data.prompt,
            "messages": [m.model_dump() for m in data.messages] if data.messages else None,
            "params": params,
            "context": data.context,
            "fairness": data.fairness.model_dump(exclude_none=True) if data.fairness else None,
            "enqueued_at": time.time(),
        }
        try:
            await asyncio.to_thread(app.enqueue, payload, queue)
        except Exception as exc:
            # Record why, so the job is not lost silently, then tell the caller.
            detail = f"could not queue the job: {type(exc).__name__}"
            await asyncio.to_thread(
                jobs.finish, job_id, Status.FAILED, error={"code": "queue-unavailable", "detail": detail}
            )
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
