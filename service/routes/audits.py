"""Audit runs: create, watch, cancel, resume, report, compare."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Literal

from litestar import Controller, MediaType, Response, delete, get, post
from litestar.datastructures import State
from litestar.params import Parameter
from pydantic import BaseModel, ConfigDict, Field

from evaluators.contracts import Status
from evaluators.errors import InputError, NotFound
from evaluators.settings import PROJECT_ROOT
from service.problems import problem
from service.state import AppState
from store.records import AuditRunRecord
from workers.params import resolve_params

SUITE_DIR = PROJECT_ROOT / "suites"


class AuditRequest(BaseModel):
    """A pre-release audit: a suite through a model under a policy."""

    model_config = ConfigDict(extra="forbid")

    suite: str | dict[str, Any] = Field(
        description="A shipped suite's name (see suites/), or an inline suite {name, version, items}."
    )
    model: str | None = Field(default=None, description="Model id or local folder; default smollm2.")
    policy: str = Field(default="default", description="Policy whose checks and gates apply.")
    params: dict[str, Any] = Field(default_factory=dict, description="Generation parameters.")
    samples_per_prompt: int = Field(default=1, ge=1, le=20, description="Generations per prompt.")


def load_suite(spec: str | dict[str, Any]) -> Any:
    from evaluators.suites import load_suite_file, parse_suite

    if isinstance(spec, dict):
        return parse_suite(spec, file="<inline suite>")
    if "/" in spec or spec.startswith("."):
        raise InputError("name a shipped suite, or send the suite inline")
    for ext in (".yaml", ".yml", ".jsonl"):
        path = SUITE_DIR / f"{spec}{ext}"
        if path.is_file():
            return load_suite_file(path)
    known = sorted(p.stem for p in SUITE_DIR.glob("*") if p.suffix in {".yaml", ".yml", ".jsonl"})
    raise NotFound(f"no suite named {spec!r}; shipped: {', '.join(known)}")


def audit_links(run_id: str) -> dict[str, str]:
    base = f"/v1/audits/{run_id}"
    return {
        "self": base,
        "report_json": f"{base}/report?format=json",
        "report_html": f"{base}/report?format=html",
        "report_junit": f"{base}/report?format=junit",
    }


def run_summary(app: AppState, run: AuditRunRecord) -> dict[str, Any]:
    """Status, progress and (partial) aggregates; heavy parts run in a worker thread."""
    from workers.audit import audit_store, progress, run_record, run_to_dict

    store = audit_store(app.worker_settings)
    body = run_to_dict(run)
    body["links"] = audit_links(run.id)
    if run.report is not None:
        # Finished: the stored record has everything; only count the rows.
        body["progress"] = progress(run, store.count_results(run.id))
        body["verdict"] = run.report.get("verdict")
        body["metrics"] = run.report.get("metrics")
        body["gates"] = run.report.get("gates")
    else:
        results = store.results(run.id)
        body["progress"] = progress(run, len(results))
        if results:
            partial = run_record(run, results, status=run.status)
            body["partial"] = {k: partial[k] for k in ("metrics", "per_category", "gates", "warnings")}
    if run.error:
        body["error"] = run.error
    return body


class AuditController(Controller):
    path = "/v1/audits"
    tags = ["audits"]

    @post("/", summary="Start an audit run")
    async def create(self, data: AuditRequest, state: State) -> Response[dict[str, Any]]:
        app: AppState = state.assay
        lp = app.policy(data.policy)
        params = resolve_params(lp.policy, data.params)
        suite = await asyncio.to_thread(load_suite, data.suite)
        if not suite.expand(data.samples_per_prompt):
            raise InputError("the suite has no items")
        settings = app.worker_settings
        model = data.model or settings.default_model
        from workers.audit import create_run

        run = await asyncio.to_thread(
            create_run,
            lp,
            suite,
            model=model,
            queue=settings.queue_for(model),
            params=params,
            samples_per_prompt=data.samples_per_prompt,
        )
        total = run.total
        await asyncio.to_thread(app.send, "assay.audit.start", [run.id], run.queue)
        return Response(
            {"id": run.id, "status": Status.QUEUED, "total": total, "links": audit_links(run.id)},
            status_code=202,
            headers={"Location": f"/v1/audits/{run.id}"},
        )

    async def _run(self, app: AppState, run_id: str) -> AuditRunRecord:
        from workers.audit import audit_store

        run = await asyncio.to_thread(audit_store(app.worker_settings).get_run, run_id)
        if run is None:
            raise NotFound(f"no audit run {run_id!r}")
        return run

    @get("/{run_id:str}", summary="Status, progress and partial aggregates")
    async def show(self, run_id: str, state: State) -> dict[str, Any]:
        app: AppState = state.assay
        run = await self._run(app, run_id)
        return await asyncio.to_thread(run_summary, app, run)

    @delete("/{run_id:str}", status_code=200, summary="Cancel an audit run")
    async def cancel(self, run_id: str, state: State) -> Response[dict[str, Any]]:
        from workers.audit import cancel_run

        app: AppState = state.assay
        run = await self._run(app, run_id)
        if run.status.terminal:
            return problem(409, "Audit already finished", f"run {run_id} is {run.status}", "audit-finished")
        await asyncio.to_thread(cancel_run, run_id)
        run = await self._run(app, run_id)
        return Response(await asyncio.to_thread(run_summary, app, run), status_code=200)

    @post("/{run_id:str}/resume", status_code=202, summary="Re-send the items that have no result yet")
    async def resume(self, run_id: str, state: State) -> dict[str, Any]:
        app: AppState = state.assay
        run = await self._run(app, run_id)
        if run.status.terminal:
            return {"id": run_id, "status": run.status, "resent": 0}
        from workers.audit import audit_store

        done = await asyncio.to_thread(audit_store(app.worker_settings).count_results, run_id)
        await asyncio.to_thread(app.send, "assay.audit.start", [run_id], run.queue)
        return {"id": run_id, "status": run.status, "resent": max(0, run.total - done)}

    @get("/{run_id:str}/report", summary="The run's report as JSON, HTML or JUnit XML")
    async def report(
        self,
        run_id: str,
        state: State,
        format: Literal["json", "html", "junit"] = Parameter(default="json", description="Report format."),
    ) -> Response[Any]:
        from service import reports

        app: AppState = state.assay
        run = await self._run(app, run_id)
        if run.status != Status.SUCCEEDED or run.report is None:
            return problem(
                409, "Report not ready", f"run {run_id} is {run.status}; reports exist once it succeeds",
                "report-not-ready",
            )  # fmt: skip
        record = run.report
        if format == "html":
            return Response(reports.render_html(record), media_type=MediaType.HTML)
        if format == "junit":
            return Response(reports.render_junit(record), media_type="application/xml")
        return Response(reports.render_json(record), media_type=MediaType.JSON)

    @get("/{run_a:str}/compare/{run_b:str}", summary="What got better or worse from run a to run b")
    async def compare(self, run_a: str, run_b: str, state: State) -> dict[str, Any]:
        from service import reports

        app: AppState = state.assay
        a, b = await self._run(app, run_a), await self._run(app, run_b)
        if a.report is None or b.report is None:
            pending = a if a.report is None else b
            raise InputError(f"run {pending.id} has no report yet (status {pending.status})")
        result: dict[str, Any] = reports.compare(a.report, b.report)
        return result


def write_reports(record: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the three report files (used by the CLI)."""
    from service import reports

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"audit-{record['id']}"
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.html", out_dir / f"{stem}.junit.xml"]
    paths[0].write_text(json.dumps(reports.render_json(record), indent=2), encoding="utf-8")
    paths[1].write_text(reports.render_html(record), encoding="utf-8")
    paths[2].write_text(reports.render_junit(record), encoding="utf-8")
    return paths
