"""The OpenAI-compatible routes: chat and text completions, models, moderations.

Completions are guarded generation jobs like ``POST /v1/generations``: one
recorded, queued job per choice, read back from the job store without
blocking the event loop. Errors on these routes take OpenAI's shape.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.response import Stream

from evaluators.contracts import JobResult, Prompt, Status
from evaluators.engine import Stage
from evaluators.errors import InputError, PayloadTooLarge
from service.auth import Principal, requires
from service.jobs import await_job, cancel_job, submit_job
from service.openai import mapping
from service.openai.errors import OPENAI_EXCEPTION_HANDLERS, openai_error
from service.openai.schema import (
    ChatRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    ModerationRequest,
    ModerationResponse,
    unsupported,
)
from service.openai.streaming import Kind, sse
from service.state import AppState, ModerationItem

DEFAULT_POLICY = "default"
STAGE_HEADER = "x-assay-stage"

# A failed job's code -> the status OpenAI clients get.
JOB_ERROR_STATUS = {
    "model-missing": 503,
    "queue-unavailable": 503,
    "invalid-input": 400,
    "limit-exceeded": 400,
    "payload-too-large": 413,
}


def _served(app: AppState) -> list[str]:
    settings = app.worker_settings
    return mapping.served_models(settings.default_model, list(settings.model_queues))


async def _results(app: AppState, job_ids: list[str]) -> list[JobResult] | Response[dict[str, Any]]:
    """Every job's result, or the OpenAI-shaped error of the first that did not succeed."""
    timeout = app.worker_settings.job_time_limit_s + 30.0
    records = await asyncio.gather(*(await_job(app, job_id, timeout) for job_id in job_ids))
    results: list[JobResult] = []
    for job_id, record in zip(job_ids, records, strict=True):
        if record is None:
            await asyncio.gather(*(cancel_job(app, j) for j in job_ids))
            return openai_error(504, f"job {job_id} did not finish in {timeout:.0f} s", code="timeout")
        if record.status != Status.SUCCEEDED or record.result is None:
            error = record.error
            code = (error.code if error else None) or f"job-{record.status}"
            detail = (error.detail or error.reason if error else None) or f"job {job_id} {record.status}"
            return openai_error(JOB_ERROR_STATUS.get(code, 500), detail or "", code=code)
        results.append(record.result)
    return results


async def _submit(
    app: AppState,
    request: Request[Any, Any, Any],
    data: ChatRequest | CompletionRequest,
    prompt: Prompt,
    principal: Principal,
) -> tuple[str, list[str]]:
    """Queue one job per choice; returns the model name and the job ids."""
    model, policy = mapping.split_model(data.model, request.headers.get(mapping.POLICY_HEADER), _served(app))
    lp = app.policy(policy or DEFAULT_POLICY, principal)
    params = lp.policy.generation.resolve(mapping.overrides(data), policy=lp.name)
    if data.stream_options is not None and not data.stream:
        raise InputError("stream_options needs stream: true", param="stream_options")
    job_ids = []
    for i in range(data.choices()):
        # Choice i samples with seed + i, like the samples of one job.
        seeded = params.with_seed_offset(i)
        job_ids.append(
            await submit_job(
                app, lp, prompt, seeded, principal=principal, model=model, stream=bool(data.stream)
            )
        )
    return model, job_ids


def _stream(
    app: AppState, kind: Kind, data: ChatRequest | CompletionRequest, created: int, job_ids: list[str]
) -> Stream:
    include_usage = bool(data.stream_options and data.stream_options.include_usage)
    return Stream(
        sse(app, kind, data.model, created, job_ids, include_usage),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _complete(
    app: AppState,
    request: Request[Any, Any, Any],
    data: ChatRequest | CompletionRequest,
    kind: Kind,
    prompt: Prompt,
    principal: Principal,
) -> Response[dict[str, Any]] | Stream:
    """One completion of either kind: queue its jobs, then stream them or wait for them."""
    created = int(time.time())
    _, job_ids = await _submit(app, request, data, prompt, principal)
    if data.stream:
        return _stream(app, kind, data, created, job_ids)
    results = await _results(app, job_ids)
    if isinstance(results, Response):
        return results
    build = mapping.chat_completion if kind == "chat" else mapping.completion
    body = build(data.model, created, job_ids, results)
    return Response(body.model_dump(mode="json"), status_code=200)


class OpenAIController(Controller):
    """Drop-in routes for apps that speak the OpenAI protocol."""

    path = "/v1"
    tags = ["openai"]
    opt = requires("app")
    exception_handlers = OPENAI_EXCEPTION_HANDLERS

    @post("/chat/completions", status_code=200, summary="OpenAI-compatible chat completion, guarded")
    async def chat(
        self, data: ChatRequest, state: State, request: Request[Any, Any, Any], principal: Principal
    ) -> Response[dict[str, Any]] | Stream:
        prompt = mapping.chat_prompt(data.messages)
        return await _complete(state.assay, request, data, "chat", prompt, principal)

    @post("/completions", status_code=200, summary="OpenAI-compatible text completion, guarded")
    async def complete(
        self, data: CompletionRequest, state: State, request: Request[Any, Any, Any], principal: Principal
    ) -> Response[dict[str, Any]] | Stream:
        prompt = mapping.completion_prompt(data.prompt)
        return await _complete(state.assay, request, data, "text", prompt, principal)

    @get("/models", summary="Served models, each alone and with each policy ('MODEL@POLICY')")
    async def models(self, state: State, principal: Principal) -> ModelList:
        app: AppState = state.assay
        created = int(app.started_at)
        policies = [p for p in app.policies.names() if principal.sees_policy(p)]
        cards = []
        for model in _served(app):
            cards.append(ModelCard(id=model, created=created, policies=policies))
            cards.extend(
                ModelCard(id=f"{model}{mapping.ALIAS_SEP}{p}", created=created, policies=policies, policy=p)
                for p in policies
            )
        return ModelList(data=cards)

    @post("/moderations", status_code=200, summary="OpenAI-compatible moderation, by a policy's checks")
    async def moderations(
        self, data: ModerationRequest, state: State, request: Request[Any, Any, Any], principal: Principal
    ) -> ModerationResponse:
        app: AppState = state.assay
        unsupported(data.model_extra)
        texts = [data.input] if isinstance(data.input, str) else list(data.input)
        if not texts:
            raise InputError("input is empty", param="input")
        if len(texts) > app.settings.max_batch_items:
            raise PayloadTooLarge(
                f"{len(texts)} texts sent; at most {app.settings.max_batch_items} per call",
                param="input",
            )
        _, _, alias = (data.model or "").partition(mapping.ALIAS_SEP)
        header = (request.headers.get(mapping.POLICY_HEADER) or "").strip() or None
        if alias and header and alias != header:
            raise InputError(
                f"model alias names policy {alias!r} but the X-Assay-Policy header names {header!r}",
                param="model",
            )
        stage: Stage = "output" if request.headers.get(STAGE_HEADER) == "output" else "input"
        if request.headers.get(STAGE_HEADER, stage) != stage:
            raise InputError("X-Assay-Stage must be input or output", param="X-Assay-Stage")
        items = [ModerationItem(t) for t in texts]
        lp, decisions = await app.moderate(alias or header or DEFAULT_POLICY, stage, items, principal)
        return ModerationResponse(
            id=f"modr-{int(time.time() * 1000):x}",
            model=data.model or f"assay{mapping.ALIAS_SEP}{lp.name}",
            results=[mapping.moderation_result(d) for d in decisions],
            assay={"policy": lp.identity(), "stage": stage},
        )
