"""Drift: reports (``POST``/``GET /v1/drift/reports``), baselines, and the recorder's counters.

A report request is checked (policy, baseline) and stored, then built by a
worker (``assay.drift.report``); the API only reads it back, as JSON or as the
self-contained HTML page.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any, Literal

from litestar import Controller, MediaType, Response, get, post
from litestar.datastructures import State
from litestar.params import Parameter
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evaluators.contracts.drift import (
    BASELINE_NAME,
    FROM_EXAMPLE,
    TO_EXAMPLE,
    Baseline,
    DriftReportRecord,
    DriftReportRequest,
)
from evaluators.contracts.schema import schema_extra
from evaluators.errors import InputError, NotFound, Overloaded
from service.auth import Principal, requires
from service.problems import problem
from service.state import AppState
from workers.drift import check_request, store


def report_links(report_id: str) -> dict[str, str]:
    base = f"/v1/drift/reports/{report_id}"
    return {"self": base, "json": f"{base}?format=json", "html": f"{base}?format=html"}


def report_summary(record: DriftReportRecord) -> dict[str, Any]:
    """A report as lists show it: status, verdict and what drifted."""
    body: dict[str, Any] = {
        "id": record.id,
        "status": record.status,
        "policy": record.policy,
        "model": record.model,
        "trigger": record.trigger,
        "window": record.request.window.wire(),
        "created_at": record.created_at.isoformat(),
        "finished_at": record.finished_at.isoformat() if record.finished_at else None,
        "links": report_links(record.id),
    }
    if record.report is not None:
        body["verdict"] = record.report.verdict
        body["drifted"] = list(record.report.drifted)
    if record.error is not None:
        body["error"] = record.error
    if record.alert is not None:
        body["alert"] = record.alert
    return body


_WHEN = {"type": "string", "format": "date-time"}
_WINDOW = {"required": ["from", "to"], "properties": {"from": {"type": "string"}, "to": {"type": "string"}}}


class BaselineBody(BaseModel):
    """``POST /v1/drift/baselines``: a window of live events or an audit run, under a name."""

    # Either a whole window (from and to) or an audit run, as ``Baseline`` checks.
    model_config = ConfigDict(
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        json_schema_extra=schema_extra(
            {
                "oneOf": [
                    {
                        "required": ["from", "to"],
                        "properties": {"from": _WHEN, "to": _WHEN, "audit": {"type": "null"}},
                    },
                    {"required": ["audit"], "properties": {"audit": {"type": "string"}}, "not": _WINDOW},
                ]
            }
        ),
    )

    name: str = Field(pattern=BASELINE_NAME, description="Unique per policy, e.g. 'launch' or '2026-q1'.")
    policy: str = Field(default="default", description="Policy name.")
    model: str | None = Field(default=None, description="Only this model's events; default any.")
    start: dt.datetime | None = Field(
        default=None, alias="from", examples=[FROM_EXAMPLE], description="Window start (ISO 8601)."
    )
    end: dt.datetime | None = Field(
        default=None, alias="to", examples=[TO_EXAMPLE], description="Window end (ISO 8601)."
    )
    audit: str | None = Field(default=None, description="An audit run id whose items are the baseline.")


async def _check_audit(app: AppState, audit: str | None, principal: Principal) -> None:
    """An audit run named as a baseline must exist and be the caller's tenant's (else 404)."""
    if audit is not None:
        run = await asyncio.to_thread(app.audits().repo.get_run, audit, principal.tenant)
        if run is None:
            raise NotFound(f"no audit run {audit!r}")


class DriftController(Controller):
    path = "/v1/drift"
    tags = ["drift"]
    opt = requires("auditor")

    @post("/reports", status_code=202, summary="Compare traffic with a baseline (a worker builds it)")
    async def create_report(
        self, data: DriftReportRequest, state: State, principal: Principal
    ) -> Response[dict[str, Any]]:
        app: AppState = state.assay
        app.policy(data.policy, principal)  # 404 for an unknown policy, or one the tenant may not use
        await _check_audit(app, data.baseline.audit if data.baseline else None, principal)
        repo = store(app.worker_settings)
        await asyncio.to_thread(check_request, repo, app.policies, data)
        queue = app.worker_settings.default_queue
        await asyncio.to_thread(app.queue_guard.check, queue)
        report_id = uuid.uuid4().hex
        record = await asyncio.to_thread(repo.create_report, report_id, data, "api", principal.tenant)
        try:
            await asyncio.to_thread(app.send, "assay.drift.report", [report_id], queue)
        except Exception as exc:
            await asyncio.to_thread(repo.fail_report, report_id, f"queue unavailable: {type(exc).__name__}")
            raise Overloaded("the queue is unavailable; the report was not started") from exc
        return Response(
            {"id": report_id, "status": record.status, "links": report_links(report_id)},
            status_code=202,
            headers={"Location": f"/v1/drift/reports/{report_id}"},
        )

    @get("/reports", summary="Drift reports, newest first")
    async def list_reports(
        self,
        state: State,
        principal: Principal,
        policy: str | None = Parameter(default=None, description="Only this policy's reports."),
        trigger: Literal["api", "schedule", "cli"] | None = Parameter(
            default=None, description="Only these."
        ),
        limit: int = Parameter(default=50, ge=1, le=500, description="Most reports returned."),
    ) -> dict[str, Any]:
        app: AppState = state.assay
        records = await asyncio.to_thread(
            store(app.worker_settings).reports, policy, trigger=trigger, limit=limit, tenant=principal.tenant
        )
        return {"reports": [report_summary(r) for r in records]}

    @get("/reports/{report_id:str}", summary="A drift report as JSON or as an HTML page")
    async def show_report(
        self,
        report_id: str,
        state: State,
        principal: Principal,
        format: Literal["json", "html"] = Parameter(default="json", description="Report format."),
    ) -> Response[Any]:
        app: AppState = state.assay
        # Another tenant's report is not found: its existence is not revealed.
        record = await asyncio.to_thread(store(app.worker_settings).report, report_id, principal.tenant)
        if record is None:
            raise NotFound(f"no drift report {report_id!r}")
        if format == "html":
            if record.report is None:
                return problem(
                    409, "Report not ready", f"report {report_id} is {record.status}", "report-not-ready"
                )
            from evaluators.drift.render import render_html

            return Response(render_html(record.report), media_type=MediaType.HTML)
        body = report_summary(record)
        if record.report is not None:
            body["report"] = record.report.to_json()
        return Response(body, media_type=MediaType.JSON)

    @post("/baselines", status_code=201, summary="Name a baseline: a window of traffic or an audit run")
    async def create_baseline(self, data: BaselineBody, state: State, principal: Principal) -> dict[str, Any]:
        app: AppState = state.assay
        app.policy(data.policy, principal)
        await _check_audit(app, data.audit, principal)
        try:
            baseline = Baseline(
                name=data.name,
                policy=data.policy,
                model=data.model,
                start=data.start,
                end=data.end,
                audit=data.audit,
            )
            if baseline.audit is None:
                # An empty or reversed window could never be compared against (reports need to > from).
                baseline.spec()
        except ValidationError as exc:
            raise InputError(f"invalid baseline: {exc.errors()[0]['msg']}") from None
        created = await asyncio.to_thread(store(app.worker_settings).create_baseline, baseline)
        if app.drift is not None:
            app.drift.profiles.invalidate(data.policy)
        return created.wire()

    @get("/baselines", summary="Named baselines, newest first")
    async def list_baselines(
        self,
        state: State,
        principal: Principal,
        policy: str | None = Parameter(default=None, description="Only this policy's."),
    ) -> dict[str, Any]:
        app: AppState = state.assay
        baselines = await asyncio.to_thread(store(app.worker_settings).baselines, policy)
        # Baselines belong to policies: a tenant sees those of the policies it may use.
        return {"baselines": [b.wire() for b in baselines if principal.sees_policy(b.policy)]}

    @get("/recorder", summary="This API process's drift recorder: events recorded, acknowledged, dropped")
    async def recorder(self, state: State) -> dict[str, Any]:
        app: AppState = state.assay
        return {"recorder": app.drift.stats() if app.drift is not None else None}
