"""``assay drift report`` and ``assay drift baseline``: drift from the command line.

With ``--server URL`` the report is requested from that API and built by its
workers; without it, it is built in this process from the local store, with
the same code. Either way the JSON and HTML land in ``--out``, and the exit
code is 1 when something drifted (for cron jobs and CI), 0 otherwise.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from assay.client import auth_headers
from evaluators.contracts.drift import Baseline, DriftReport, DriftReportRequest
from evaluators.errors import InputError

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def _span(text: str) -> dt.timedelta:
    m = _SPAN.match(text.strip())
    if not m:
        raise InputError(f"--last {text!r}: use a number and s, m, h or d, e.g. 24h")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
    return dt.timedelta(**{unit: float(m.group(1))})


def _request(args: Any) -> DriftReportRequest:
    if args.start or args.end:
        window: dict[str, Any] = {"from": args.start, "to": args.end}
    else:
        end = dt.datetime.now(dt.UTC)
        window = {"from": (end - _span(args.last)).isoformat(), "to": end.isoformat()}
    baseline: dict[str, Any] | None = None
    if args.baseline:
        baseline = {"name": args.baseline}
    elif args.baseline_audit:
        baseline = {"audit": args.baseline_audit}
    elif args.baseline_from or args.baseline_to:
        baseline = {"from": args.baseline_from, "to": args.baseline_to}
    try:
        return DriftReportRequest.model_validate(
            {"policy": args.policy, "model": args.model, "baseline": baseline, "window": window}
        )
    except ValidationError as exc:
        raise InputError(f"invalid drift report request: {exc.errors()[0]['msg']}") from None


def _say(started: float, message: str) -> None:
    print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)


def _write(report: DriftReport, out: Path) -> int:
    from evaluators.drift.render import render_html

    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / f"drift-{report.id}.json", out / f"drift-{report.id}.html"
    json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    for path in (json_path, html_path):
        print(f"wrote {path}", file=sys.stderr)
    print(f"verdict: {report.verdict.upper()}", file=sys.stderr)
    for s in report.signals:
        if s.verdict == "drift":
            stat = ", ".join(
                f"{x.name} {x.value:.3g} > {x.threshold:g}" for x in s.statistics if x.verdict == "drift"
            )
            print(f"  DRIFT {s.name}: {stat}", file=sys.stderr)
    return 1 if report.verdict == "drift" else 0


def report_embedded(request: DriftReportRequest, out: Path) -> int:
    from workers.drift import run_report, store
    from workers.pipeline import worker_policies

    started = time.monotonic()
    report_id = uuid.uuid4().hex
    store().create_report(report_id, request, "cli")
    _say(started, f"drift report {report_id}: policy {request.policy}, embedded")
    record = run_report(report_id, worker_policies(), progress=lambda m: _say(started, m))
    if record is None or record.report is None:
        print(f"error: report {report_id} failed: {record.error if record else 'missing'}", file=sys.stderr)
        return 2
    _say(started, f"built in {record.report.elapsed_ms:.0f} ms")
    return _write(record.report, out)


def report_remote(server: str, request: DriftReportRequest, out: Path, poll_s: float = 0.5) -> int:
    started = time.monotonic()
    with httpx.Client(base_url=server, timeout=60, headers=auth_headers()) as c:
        r = c.post(
            "/v1/drift/reports", json=request.model_dump(mode="json", by_alias=True, exclude_none=True)
        )
        if r.status_code != 202:
            print(f"error: {r.status_code} {r.text}", file=sys.stderr)
            return 2
        report_id = r.json()["id"]
        _say(started, f"drift report {report_id} queued on {server}")
        last = "queued"
        while True:
            body = c.get(f"/v1/drift/reports/{report_id}").json()
            if body["status"] != last:
                last = body["status"]
                _say(started, last)
            if last in ("succeeded", "failed"):
                break
            time.sleep(poll_s)
    if last != "succeeded":
        print(f"error: report {report_id} failed: {body.get('error')}", file=sys.stderr)
        return 2
    return _write(DriftReport.model_validate(body["report"]), out)


def cmd_drift_report(args: Any) -> int:
    request = _request(args)
    try:
        if args.server:
            return report_remote(args.server, request, Path(args.out))
        return report_embedded(request, Path(args.out))
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.server}: {exc}", file=sys.stderr)
        return 2


def cmd_drift_baseline(args: Any) -> int:
    body: dict[str, Any] = {"name": args.name, "policy": args.policy, "model": args.model}
    if args.audit:
        body["audit"] = args.audit
    else:
        body.update({"from": args.start, "to": args.end})
    if args.server:
        with httpx.Client(base_url=args.server, timeout=60, headers=auth_headers()) as c:
            r = c.post("/v1/drift/baselines", json={k: v for k, v in body.items() if v is not None})
        if r.status_code != 201:
            print(f"error: {r.status_code} {r.text}", file=sys.stderr)
            return 2
        created = r.json()
    else:
        from workers.drift import store

        window = {"start": body.pop("from", None), "end": body.pop("to", None)}
        try:
            baseline = Baseline.model_validate({**body, **window})
        except ValidationError as exc:
            raise InputError(f"invalid baseline: {exc.errors()[0]['msg']}") from None
        created = store().create_baseline(baseline).wire()
    print(json.dumps(created))
    return 0


def add_parser(sub: Any) -> None:
    """``assay drift ...`` subcommands."""
    drift = sub.add_parser("drift", help="drift reports and baselines").add_subparsers(
        dest="drift_command", required=True
    )
    report = drift.add_parser(
        "report", help="compare a window of traffic with a baseline; exit 1 when a signal drifts"
    )
    report.add_argument("--policy", default="default", help="policy name")
    report.add_argument("--model", default=None, help="only this model's events")
    report.add_argument(
        "--baseline", default=None, help="a named baseline (default: the policy's current one)"
    )
    report.add_argument("--baseline-from", default=None, help="baseline window start (ISO 8601)")
    report.add_argument("--baseline-to", default=None, help="baseline window end (ISO 8601)")
    report.add_argument("--baseline-audit", default=None, help="an audit run id as the baseline")
    report.add_argument("--from", dest="start", default=None, help="window start (ISO 8601)")
    report.add_argument("--to", dest="end", default=None, help="window end (ISO 8601)")
    report.add_argument("--last", default="24h", help="window: the last 24h, 90m, 7d... (default 24h)")
    report.add_argument("--server", default=None, help="API URL; without it the report is built here")
    report.add_argument("--out", default="reports", help="folder for the JSON and HTML report")
    report.set_defaults(func=cmd_drift_report)
    baseline = drift.add_parser("baseline", help="name a baseline: a window of traffic or an audit run")
    baseline.add_argument("--name", required=True, help="baseline name, unique per policy")
    baseline.add_argument("--policy", default="default", help="policy name")
    baseline.add_argument("--model", default=None, help="only this model's events")
    baseline.add_argument("--from", dest="start", default=None, help="window start (ISO 8601)")
    baseline.add_argument("--to", dest="end", default=None, help="window end (ISO 8601)")
    baseline.add_argument("--audit", default=None, help="an audit run id instead of a window")
    baseline.add_argument("--server", default=None, help="API URL; without it the local store is used")
    baseline.set_defaults(func=cmd_drift_baseline)
