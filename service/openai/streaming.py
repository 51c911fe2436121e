"""``stream: true``: Server-Sent Events in OpenAI's chunk format, from the text a job's worker released.

Each choice is a job; the worker publishes its text piece by piece once the
output checks over each piece passed (``workers/stream_guard.py``), on the
deployment's channel (``workers/streams.py``). This module turns the pieces
into chunks, ends each choice with its finish reason (``content_filter`` when
a check blocked), and sends one last chunk with the ``assay`` extension (and
the usage, when ``stream_options.include_usage`` asked). The job store stays
the source of truth for how each job ended. A client that goes away cancels
its jobs, which stops their decoding.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio

from evaluators.contracts import JobResult, Status
from evaluators.findings import Action
from service.jobs import await_job, cancel_job
from service.openai import mapping
from service.openai.errors import error_type
from service.state import AppState
from store.records import JobRecord
from workers.streams import stream_reader

Kind = Literal["chat", "text"]

STORE_POLL_S = 0.5
"""How often a stream with no news asks the store whether its job ended (failed, or blocked on input)."""


@dataclass(frozen=True)
class _Piece:
    index: int
    text: str


@dataclass(frozen=True)
class _Ended:
    index: int
    record: JobRecord | None
    streamed: bool
    """Whether any text came through the channel (none: the answer goes out whole at the end)."""


async def _follow(app: AppState, index: int, job_id: str, out: asyncio.Queue[Any], timeout: float) -> None:
    """Forward one job's released text to ``out``, then how the job ended."""
    reader = stream_reader(app.worker_settings, job_id)
    jobs = app.jobs()
    deadline = time.monotonic() + timeout
    next_poll = time.monotonic() + STORE_POLL_S
    streamed = False
    record: JobRecord | None = None
    try:
        while time.monotonic() < deadline:
            events = await reader.read(timeout=0.25)
            ended = False
            for event in events:
                if event.kind == "text" and event.text:
                    streamed = True
                    await out.put(_Piece(index, event.text))
                ended = ended or event.kind == "end"
            if ended:
                # The worker records the outcome right after the stream's end.
                record = await await_job(app, job_id, 30.0)
                break
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + STORE_POLL_S
                current = await asyncio.to_thread(jobs.get, job_id)
                if current is not None and current.status.terminal:
                    # All the worker published came before its outcome: take the last of it.
                    for event in await reader.read(timeout=0.0):
                        if event.kind == "text" and event.text:
                            streamed = True
                            await out.put(_Piece(index, event.text))
                    record = current
                    break
    finally:
        await reader.close()
    await out.put(_Ended(index, record, streamed))


def _event(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


class _Chunks:
    """Chunk bodies for one response: chat (``delta``) or text completion (``text``)."""

    def __init__(self, kind: Kind, model: str, created: int, job_id: str) -> None:
        self.kind = kind
        self.base = {
            "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{job_id}",
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": created,
            "model": model,
        }

    def choice(
        self, index: int, text: str | None = None, *, finish: str | None = None, **delta: Any
    ) -> dict[str, Any]:
        if self.kind == "chat":
            if text is not None:
                delta["content"] = text
            part: dict[str, Any] = {"index": index, "delta": delta}
        else:
            part = {"index": index, "text": text or ""}
        return {**self.base, "choices": [{**part, "logprobs": None, "finish_reason": finish}]}

    def last(
        self, job_ids: Sequence[str], results: Sequence[JobResult], include_usage: bool
    ) -> dict[str, Any]:
        usage = mapping.usage(results).model_dump() if include_usage else None
        assay = mapping.extension(job_ids, results).model_dump(mode="json")
        return {**self.base, "choices": [], "usage": usage, "assay": assay}


def _failure(record: JobRecord | None, job_id: str) -> dict[str, Any]:
    if record is None:
        return {"error": {"message": f"job {job_id} did not finish in time", "type": "server_error",
                          "param": None, "code": "timeout"}}  # fmt: skip
    error = record.error
    code = (error.code if error else None) or f"job-{record.status}"
    message = (error.detail or error.reason if error else None) or f"job {job_id} {record.status}"
    status = 409 if record.status == Status.CANCELLED else 500
    return {"error": {"message": message, "type": error_type(status), "param": None, "code": code}}


async def sse(
    app: AppState, kind: Kind, model: str, created: int, job_ids: list[str], include_usage: bool
) -> AsyncIterator[bytes]:
    """The response body of a streaming completion over ``job_ids`` (one per choice)."""
    chunks = _Chunks(kind, model, created, job_ids[0])
    timeout = app.worker_settings.job_time_limit_s + 30.0
    out: asyncio.Queue[Any] = asyncio.Queue()
    tasks = [asyncio.create_task(_follow(app, i, j, out, timeout)) for i, j in enumerate(job_ids)]
    results: dict[int, JobResult] = {}
    complete = False
    try:
        if kind == "chat":
            for i in range(len(job_ids)):
                yield _event(chunks.choice(i, "", role="assistant"))
        while len(results) < len(job_ids):
            item = await out.get()
            if isinstance(item, _Piece):
                yield _event(chunks.choice(item.index, item.text))
                continue
            record: JobRecord | None = item.record
            if record is None or record.status != Status.SUCCEEDED or record.result is None:
                yield _event(_failure(record, job_ids[item.index]))
                return
            result = record.result
            refusal = mapping.refusal(result)
            if result.action is Action.BLOCK and result.blocked_stage == "input":
                # Nothing was generated: the refusal is the answer, as without streaming.
                yield _event(chunks.choice(item.index, refusal, refusal=refusal))
            elif result.action is Action.BLOCK:
                # Cut mid-stream: what passed was sent; the rest never leaves the worker.
                if kind == "chat":
                    yield _event(chunks.choice(item.index, refusal=refusal))
            elif not item.streamed and result.output:
                yield _event(chunks.choice(item.index, result.output))  # a broker with no channel
            yield _event(chunks.choice(item.index, finish=mapping.finish_reason(result)))
            results[item.index] = result
        ordered = [results[i] for i in range(len(job_ids))]
        yield _event(chunks.last(job_ids, ordered, include_usage))
        yield b"data: [DONE]\n\n"
        complete = True
    finally:
        for task in tasks:
            task.cancel()
        # Shielded: on a disconnect this runs inside a cancelled scope.
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)
            if not complete:
                for job_id in job_ids:
                    await cancel_job(app, job_id)
