"""A typed client for Assay's API, sync (``Client``) and async (``AsyncClient``).

    from assay.client import Client

    with Client("http://127.0.0.1:8000") as assay:
        decision = assay.moderate("Call me at 212-555-0199", policy="default")
        job = assay.generate(prompt="What is the capital of France?", wait=30)
        print(job.result.output if job.result else job.status)

``api_key`` (default: the ``ASSAY_API_KEY`` variable) is sent as a bearer
token to a server that requires keys. Every call has a timeout; answers 429
and 503 (and connections that could not be made) are retried with exponential
backoff, honouring ``Retry-After``;
an error answer raises the typed exception of its status (``assay.errors``)
carrying the problem details. Both clients build their requests with the
same ``_Calls``; only sending differs.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import httpx

from assay.errors import AssayConnectionError, error_for
from assay.models import Audit, DriftReport, Job, Moderation, ModerationBatch, Policy
from evaluators.contracts import AuditRequest, ChatMessage, GenerationRequest

T = TypeVar("T")
Stage = Literal["input", "output"]
RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class _Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    params: Mapping[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    """Longer than the client's timeout when the server is asked to wait."""


def _json(response: httpx.Response) -> Any:
    return response.json()


def _body(payload: Any) -> Any:
    """A contract or a plain dict, as JSON."""
    if hasattr(payload, "model_dump"):
        return payload.model_dump(mode="json", exclude_none=True)
    return payload


class _Calls:
    """Every endpoint as a request and a parser; no I/O."""

    @staticmethod
    def moderate(
        text: str, policy: str, stage: Stage, context: Sequence[str] | None, verbose: bool
    ) -> _Call[Moderation]:
        body = {"text": text, "policy": policy, "stage": stage, "context": list(context) if context else None}
        return _Call(
            "POST", "/v1/moderate", lambda r: Moderation.model_validate(r.json()), body, {"verbose": verbose}
        )

    @staticmethod
    def moderate_batch(
        texts: Sequence[str], policy: str, stage: Stage, verbose: bool
    ) -> _Call[ModerationBatch]:
        body = {"texts": list(texts), "policy": policy, "stage": stage}
        return _Call(
            "POST",
            "/v1/moderate/batch",
            lambda r: ModerationBatch.model_validate(r.json()),
            body,
            {"verbose": verbose},
        )

    @staticmethod
    def generate(request: GenerationRequest, wait: float, timeout: float) -> _Call[Job]:
        return _Call(
            "POST",
            "/v1/generations",
            lambda r: Job.model_validate(r.json()),
            _body(request),
            {"wait": wait} if wait else {},
            timeout=timeout + wait,
        )

    @staticmethod
    def job(job_id: str) -> _Call[Job]:
        return _Call("GET", f"/v1/jobs/{job_id}", lambda r: Job.model_validate(r.json()))

    @staticmethod
    def cancel_job(job_id: str) -> _Call[Job]:
        return _Call("POST", f"/v1/jobs/{job_id}/cancel", lambda r: Job.model_validate(r.json()))

    @staticmethod
    def start_audit(request: AuditRequest | Mapping[str, Any]) -> _Call[Audit]:
        request = AuditRequest.model_validate(_body(request))  # checked here, before it is sent
        return _Call("POST", "/v1/audits", lambda r: Audit.model_validate(r.json()), _body(request))

    @staticmethod
    def audit(run_id: str) -> _Call[Audit]:
        return _Call("GET", f"/v1/audits/{run_id}", lambda r: Audit.model_validate(r.json()))

    @staticmethod
    def cancel_audit(run_id: str) -> _Call[Audit]:
        return _Call("POST", f"/v1/audits/{run_id}/cancel", lambda r: Audit.model_validate(r.json()))

    @staticmethod
    def resume_audit(run_id: str) -> _Call[dict[str, Any]]:
        return _Call("POST", f"/v1/audits/{run_id}/resume", _json)

    @staticmethod
    def audit_report(run_id: str, format: Literal["json", "html", "junit"]) -> _Call[Any]:
        parse: Callable[[httpx.Response], Any] = _json if format == "json" else (lambda r: r.text)
        return _Call("GET", f"/v1/audits/{run_id}/report", parse, params={"format": format})

    @staticmethod
    def compare_audits(run_a: str, run_b: str) -> _Call[dict[str, Any]]:
        return _Call("GET", f"/v1/audits/{run_a}/compare/{run_b}", _json)

    @staticmethod
    def create_drift_report(request: Mapping[str, Any] | Any) -> _Call[DriftReport]:
        return _Call(
            "POST", "/v1/drift/reports", lambda r: DriftReport.model_validate(r.json()), _body(request)
        )

    @staticmethod
    def drift_report(report_id: str) -> _Call[DriftReport]:
        return _Call("GET", f"/v1/drift/reports/{report_id}", lambda r: DriftReport.model_validate(r.json()))

    @staticmethod
    def drift_reports(policy: str | None, trigger: str | None, limit: int) -> _Call[list[DriftReport]]:
        params = {k: v for k, v in {"policy": policy, "trigger": trigger, "limit": limit}.items() if v}
        return _Call(
            "GET",
            "/v1/drift/reports",
            lambda r: [DriftReport.model_validate(x) for x in r.json()["reports"]],
            params=params,
        )

    @staticmethod
    def policies() -> _Call[list[Policy]]:
        return _Call(
            "GET", "/v1/policies", lambda r: [Policy.model_validate(p) for p in r.json()["policies"]]
        )

    @staticmethod
    def policy(name: str) -> _Call[dict[str, Any]]:
        return _Call("GET", f"/v1/policies/{name}", _json)


def generation_request(
    prompt: str | None,
    messages: Sequence[ChatMessage | Mapping[str, str]] | None,
    **fields: Any,
) -> GenerationRequest:
    """A ``GenerationRequest`` checked on this side (a bad one raises pydantic's ValidationError)."""
    body = {k: v for k, v in fields.items() if v is not None}
    if messages is not None:
        body["messages"] = [_body(m) for m in messages]
    return GenerationRequest.model_validate({**body, "prompt": prompt})


@dataclass(frozen=True)
class Retry:
    """Retries on 429/503 and on connections that could not be made, with exponential backoff."""

    attempts: int = 3
    """Retries after the first try; 0 never retries."""
    backoff_s: float = 0.25
    max_backoff_s: float = 8.0

    def delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before retry ``attempt`` (1-based), or None to stop."""
        if attempt > self.attempts:
            return None
        if response is not None:
            if response.status_code not in RETRY_STATUSES:
                return None
            after = response.headers.get("retry-after", "")
            if after.replace(".", "", 1).isdigit():
                return min(float(after), self.max_backoff_s)
        # Full jitter: clients that failed together do not come back together.
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))


def auth_headers(api_key: str | None = None) -> dict[str, str]:
    """``Authorization: Bearer KEY`` for ``api_key``, else ``ASSAY_API_KEY`` when set, else nothing."""
    key = api_key or os.environ.get("ASSAY_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


class _Base:
    def __init__(
        self,
        base_url: str,
        timeout: float,
        retry: Retry | None,
        headers: Mapping[str, str] | None,
        api_key: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry or Retry()
        self.headers = {**auth_headers(api_key), **(headers or {})}

    def _parse(self, call: _Call[T], response: httpx.Response) -> T:
        if response.status_code >= 400:
            raise error_for(response)
        return call.parse(response)

    def _after_failure(self, attempt: int, exc: httpx.TransportError) -> float:
        """The wait before retrying a request that got no answer; raises when it must not be retried.

        Only a connection that could not be made is retried: a request that was
        sent may have been acted on (a job queued), so it is never repeated.
        """
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            delay = self.retry.delay(attempt, None)
            if delay is not None:
                return delay
            raise AssayConnectionError(f"cannot reach {self.base_url}: {exc}") from exc
        raise AssayConnectionError(f"no answer from {self.base_url}: {exc}") from exc

    def _request(self, call: _Call[Any]) -> dict[str, Any]:
        timeout = max(self.timeout, call.timeout or 0.0)
        return {"method": call.method, "url": call.path, "json": call.json, "params": dict(call.params),
                "timeout": timeout}  # fmt: skip


class Client(_Base):
    """Synchronous client; use it as a context manager or call ``close()``."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout: float = 60.0,
        retry: Retry | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        api_key: str | None = None,
    ) -> None:
        super().__init__(base_url, timeout, retry, headers, api_key)
        self._http = httpx.Client(base_url=self.base_url, headers=self.headers, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            attempt += 1
            delay: float | None
            try:
                response = self._http.request(**self._request(call))
            except httpx.TransportError as exc:
                delay = self._after_failure(attempt, exc)
            else:
                delay = self.retry.delay(attempt, response)
                if delay is None:
                    return self._parse(call, response)
            time.sleep(delay)

    # ------------------------------------------------------------------ endpoints

    def moderate(
        self, text: str, *, policy: str = "default", stage: Stage = "output",
        context: Sequence[str] | None = None, verbose: bool = False,
    ) -> Moderation:  # fmt: skip
        return self._send(_Calls.moderate(text, policy, stage, context, verbose))

    def moderate_batch(
        self, texts: Sequence[str], *, policy: str = "default", stage: Stage = "output", verbose: bool = False
    ) -> ModerationBatch:
        return self._send(_Calls.moderate_batch(texts, policy, stage, verbose))

    def generate(
        self, prompt: str | None = None, *, messages: Sequence[ChatMessage | Mapping[str, str]] | None = None,
        wait: float = 0.0, **fields: Any,
    ) -> Job:  # fmt: skip
        """Queue a guarded generation (``model``, ``policy``, ``params``, ``context``, ``fairness``)."""
        request = generation_request(prompt, messages, **fields)
        return self._send(_Calls.generate(request, wait, self.timeout))

    def job(self, job_id: str) -> Job:
        return self._send(_Calls.job(job_id))

    def cancel_job(self, job_id: str) -> Job:
        return self._send(_Calls.cancel_job(job_id))

    def wait_job(self, job_id: str, *, timeout: float = 300.0, poll_s: float = 0.25) -> Job:
        """Poll until the job is terminal; ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not (job := self.job(job_id)).terminal:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout:.0f} s")
            time.sleep(poll_s)
        return job

    def start_audit(self, request: AuditRequest | Mapping[str, Any]) -> Audit:
        return self._send(_Calls.start_audit(request))

    def audit(self, run_id: str) -> Audit:
        return self._send(_Calls.audit(run_id))

    def cancel_audit(self, run_id: str) -> Audit:
        return self._send(_Calls.cancel_audit(run_id))

    def resume_audit(self, run_id: str) -> dict[str, Any]:
        return self._send(_Calls.resume_audit(run_id))

    def audit_report(self, run_id: str, format: Literal["json", "html", "junit"] = "json") -> Any:
        """The report: a dict for json, the document's text for html and junit."""
        return self._send(_Calls.audit_report(run_id, format))

    def compare_audits(self, run_a: str, run_b: str) -> dict[str, Any]:
        return self._send(_Calls.compare_audits(run_a, run_b))

    def wait_audit(
        self, run_id: str, *, timeout: float = 3600.0, poll_s: float = 1.0,
        on_progress: Callable[[Audit], None] | None = None,
    ) -> Audit:  # fmt: skip
        """Poll until the run is terminal, calling ``on_progress`` with each status."""
        deadline = time.monotonic() + timeout
        while True:
            audit = self.audit(run_id)
            if on_progress is not None:
                on_progress(audit)
            if audit.terminal:
                return audit
            if time.monotonic() >= deadline:
                raise TimeoutError(f"audit {run_id} still {audit.status} after {timeout:.0f} s")
            time.sleep(poll_s)

    def create_drift_report(self, request: Mapping[str, Any] | Any) -> DriftReport:
        """Ask for a drift report (``{"policy", "window": {"from", "to"}}``); a worker builds it."""
        return self._send(_Calls.create_drift_report(request))

    def drift_report(self, report_id: str) -> DriftReport:
        return self._send(_Calls.drift_report(report_id))

    def drift_reports(
        self, *, policy: str | None = None, trigger: str | None = None, limit: int = 50
    ) -> list[DriftReport]:
        return self._send(_Calls.drift_reports(policy, trigger, limit))

    def policies(self) -> list[Policy]:
        return self._send(_Calls.policies())

    def policy(self, name: str) -> dict[str, Any]:
        """One policy: its identity and the whole validated policy."""
        return self._send(_Calls.policy(name))


class AsyncClient(_Base):
    """Asynchronous client (the same calls as ``Client``, awaited); ``async with`` or ``aclose()``."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout: float = 60.0,
        retry: Retry | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        api_key: str | None = None,
    ) -> None:
        super().__init__(base_url, timeout, retry, headers, api_key)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            attempt += 1
            delay: float | None
            try:
                response = await self._http.request(**self._request(call))
            except httpx.TransportError as exc:
                delay = self._after_failure(attempt, exc)
            else:
                delay = self.retry.delay(attempt, response)
                if delay is None:
                    return self._parse(call, response)
            await asyncio.sleep(delay)

    async def moderate(
        self, text: str, *, policy: str = "default", stage: Stage = "output",
        context: Sequence[str] | None = None, verbose: bool = False,
    ) -> Moderation:  # fmt: skip
        return await self._send(_Calls.moderate(text, policy, stage, context, verbose))

    async def moderate_batch(
        self, texts: Sequence[str], *, policy: str = "default", stage: Stage = "output", verbose: bool = False
    ) -> ModerationBatch:
        return await self._send(_Calls.moderate_batch(texts, policy, stage, verbose))

    async def generate(
        self, prompt: str | None = None, *, messages: Sequence[ChatMessage | Mapping[str, str]] | None = None,
        wait: float = 0.0, **fields: Any,
    ) -> Job:  # fmt: skip
        request = generation_request(prompt, messages, **fields)
        return await self._send(_Calls.generate(request, wait, self.timeout))

    async def job(self, job_id: str) -> Job:
        return await self._send(_Calls.job(job_id))

    async def cancel_job(self, job_id: str) -> Job:
        return await self._send(_Calls.cancel_job(job_id))

    async def wait_job(self, job_id: str, *, timeout: float = 300.0, poll_s: float = 0.25) -> Job:
        deadline = time.monotonic() + timeout
        while not (job := await self.job(job_id)).terminal:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout:.0f} s")
            await asyncio.sleep(poll_s)
        return job

    async def start_audit(self, request: AuditRequest | Mapping[str, Any]) -> Audit:
        return await self._send(_Calls.start_audit(request))

    async def audit(self, run_id: str) -> Audit:
        return await self._send(_Calls.audit(run_id))

    async def cancel_audit(self, run_id: str) -> Audit:
        return await self._send(_Calls.cancel_audit(run_id))

    async def resume_audit(self, run_id: str) -> dict[str, Any]:
        return await self._send(_Calls.resume_audit(run_id))

    async def audit_report(self, run_id: str, format: Literal["json", "html", "junit"] = "json") -> Any:
        return await self._send(_Calls.audit_report(run_id, format))

    async def compare_audits(self, run_a: str, run_b: str) -> dict[str, Any]:
        return await self._send(_Calls.compare_audits(run_a, run_b))

    async def create_drift_report(self, request: Mapping[str, Any] | Any) -> DriftReport:
        return await self._send(_Calls.create_drift_report(request))

    async def drift_report(self, report_id: str) -> DriftReport:
        return await self._send(_Calls.drift_report(report_id))

    async def drift_reports(
        self, *, policy: str | None = None, trigger: str | None = None, limit: int = 50
    ) -> list[DriftReport]:
        return await self._send(_Calls.drift_reports(policy, trigger, limit))

    async def policies(self) -> list[Policy]:
        return await self._send(_Calls.policies())

    async def policy(self, name: str) -> dict[str, Any]:
        return await self._send(_Calls.policy(name))
