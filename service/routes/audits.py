"""Audit runs: create, watch, cancel, resume, report, compare."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any, Literal

from litestar import Controller, MediaType, Response, get, post
from litestar.datastructures import State
from litestar.params import Parameter

from evaluators.audit.suites import load_suite
from evaluators.contracts import AuditRequest, AuditRun, ModelInfo, Status
from evaluators.errors import InputError, NotFound
from service.auth import Principal, requires
from service.problems import problem
from service.state import AppState


def audit_links(run_id: str) -> dict[str, str]:
    base = f"/v1/audits/{run_id}"
    return {
        "self": base,
        "report_json": f"{base}/report?format=json",
        "report_html": f"{base}/report?format=html",
        "report_junit": f"{base}/report?format=junit",
    }


def run_body(run: AuditRun) -> dict[str, Any]:
    """A run as the API shows it (no suite items, no raw text)."""
    return {
        "id": run.id,
        "status": run.status,
        "suite": {"name": run.suite_name, "sha256": run.suite_sha256, "version": run.suite.get("version")},
        "model": (run.model_info or ModelInfo(id=run.model)).model_dump(mode="json"),
        "policy": {"name": run.policy_name, "sha256": run.policy_sha256},
        "params": run.params.model_dump(mode="json"),
        "samples_per_prompt": run.samples_per_prompt,
        "total": run.total,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def progress(run: AuditRun, done: int) -> dict[str, Any]:
    """Items done, rate and estimated time left."""
    elapsed = 0.0
    if run.started_at is not None:
        started = run.started_at if run.started_at.tzinfo else run.started_at.replace(tzinfo=dt.UTC)
        elapsed = max(0.0, (dt.datetime.now(dt.UTC) - started).total_seconds())
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


def run_summary(app: AppState, run: AuditRun) -> dict[str, Any]:
    """Status, progress and (partial) aggregates; heavy parts run in a worker thread."""
    runner = app.audits()
    body = run_body(run)
    body["links"] = audit_links(run.id)
    if run.report is not None:
        # Finished: the stored record has everything; only count the rows.
        body["progress"] = progress(run, runner.repo.count_results(run.id))
        body["verdict"] = run.report.get("verdict")
        body["metrics"] = run.report.get("metrics")
        body["gates"] = run.report.get("gates")
    else:
        results = runner.repo.results(run.id)
        body["progress"] = progress(run, len(results))
        if results:
            partial = runner.record(run, results, status=run.status)
            body["partial"] = {k: partial[k] for k in ("metrics", "per_category", "gates", "warnings")}
    if run.error:
        body["error"] = run.error
    return body


class AuditController(Controller):
    path = "/v1/audits"
    tags = ["audits"]
    opt = requires("auditor")

    @post("/", status_code=202, summary="Start an audit run")
    async def create(
        self, data: AuditRequest, state: State, principal: Principal
    ) -> Response[dict[str, Any]]:
        app: AppState = state.assay
        lp = app.policy(data.policy, principal)
        params = lp.policy.generation.resolve(data.params, policy=lp.name)
        suite = await asyncio.to_thread(load_suite, data.suite)
        settings = app.worker_settings
        model = data.model or settings.default_model
        queue = settings.queue_for(model)
        await asyncio.to_thread(app.queue_guard.check, queue)
        run = await asyncio.to_thread(
            app.audits().create,
            lp,
            suite,
            model=model,
            queue=queue,
            params=params,
            samples_per_prompt=data.samples_per_prompt,
            tenant=principal.tenant,
        )
        total = run.total
        await asyncio.to_thread(app.send, "assay.audit.start", [run.id], run.queue)
        return Response(
            {"id": run.id, "status": Status.QUEUED, "total": total, "links": audit_links(run.id)},
            status_code=202,
            headers={"Location": f"/v1/audits/{run.id}"},
        )

    async def _run(self, app: AppState, run_id: str, principal: Principal) -> AuditRun:
        # Another tenant's run is not found: its existence is not revealed.
        run = await asyncio.to_thread(app.audits().repo.get_run, run_id, principal.tenant)
        if run is None:
            raise NotFound(f"no audit run {run_id!r}")
        return run

    @get("/{run_id:str}", summary="Status, progress and partial aggregates")
    async def show(self, run_id: str, state: State, principal: Principal) -> dict[str, Any]:
        app: AppState = state.assay
        run = await self._run(app, run_id, principal)
        return await asyncio.to_thread(run_summary, app, run)

    @post("/{run_id:str}/cancel", status_code=200, summary="Cancel an audit run")
    async def cancel(self, run_id: str, state: State, principal: Principal) -> Response[dict[str, Any]]:
        app: AppState = state.assay
        run = await self._run(app, run_id, principal)
        if run.status.terminal:
            return problem(409, "Audit already finished", f"run {run_id} is {run.status}", "audit-finished")
        await asyncio.to_thread(app.audits().cancel, run_id)
        run = await self._run(app, run_id, principal)
        return Response(await asyncio.to_thread(run_summary, app, run), status_code=200)

    @post("/{run_id:str}/resume", status_code=202, summary="Re-send the items that have no result yet")
    async def resume(self, run_id: str, state: State, principal: Principal) -> dict[str, Any]:
        app: AppState = state.assay
        run = await self._run(app, run_id, principal)
        if run.status.terminal:
            return {"id": run_id, "status": run.status, "resent": 0}
        done = await asyncio.to_thread(app.audits().repo.count_results, run_id)
        await asyncio.to_thread(app.send, "assay.audit.start", [run_id], run.queue)
        return {"id": run_id, "status": run.status, "resent": max(0, run.total - done)}

    @get("/{run_id:str}/report", summary="The run's report as JSON, HTML or JUnit XML")
    async def report(
        self,
        run_id: str,
        state: State,
        principal: Principal,
        format: Literal["json", "html", "junit"] = Parameter(default="json", description="Report format."),
    ) -> Response[Any]:
        from evaluators.audit.junit import render_junit
        from evaluators.audit.record import render_json
        from evaluators.audit.render import render_html

        app: AppState = state.assay
        run = await self._run(app, run_id, principal)
        if run.status != Status.SUCCEEDED or run.report is None:
            return problem(
                409, "Report not ready", f"run {run_id} is {run.status}; reports exist once it succeeds",
                "report-not-ready",
            )  # fmt: skip
        record = run.report
        if format == "html":
            return Response(render_html(record), media_type=MediaType.HTML)
        if format == "junit":
            return Response(render_junit(record), media_type="application/xml")
        return Response(render_json(record), media_type=MediaType.JSON)

    @get("/{run_a:str}/compare/{run_b:str}", summary="What got better or worse from run a to run b")
    async def compare(self, run_a: str, run_b: str, state: State, principal: Principal) -> dict[str, Any]:
        from evaluators.audit.compare import compare as compare_runs

        app: AppState = state.assay
        a, b = await self._run(app, run_a, principal), await self._run(app, run_b, principal)
        if a.report is None or b.report is None:
            pending = a if a.report is None else b
            raise InputError(f"run {pending.id} has no report yet (status {pending.status})")
        result: dict[str, Any] = compare_runs(a.report, b.report)
        return result
