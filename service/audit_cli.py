"""``assay audit run`` and ``assay audit report``: for people and CI pipelines.

With ``--server URL`` the run goes through that API (and its workers);
without it the run is embedded: this process runs the chunks itself on the
local store, with the same code the workers use.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from assay.client import Client
from assay.errors import AssayClientError
from assay.models import Audit
from evaluators.contracts import AuditRequest, Status
from evaluators.errors import InputError


def _bar(done: int, total: int, started: float, width: int = 30) -> str:
    frac = done / total if total else 1.0
    filled = int(frac * width)
    rate = done / max(1e-9, time.monotonic() - started) * 60
    return f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} items  {rate:5.1f}/min"


def _exit_code(record: dict[str, Any]) -> int:
    return 0 if record.get("verdict") == "pass" else 1


def _write(record: dict[str, Any], out: Path) -> None:
    from evaluators.audit.export import write_reports

    for path in write_reports(record, out):
        print(f"wrote {path}", file=sys.stderr)
    print(f"verdict: {record.get('verdict', '?').upper()}", file=sys.stderr)
    for gate in record.get("gates", []):
        mark = "ok  " if gate.get("passed") else "FAIL"
        print(f"  {mark} {gate.get('gate') or gate.get('expression')}: {gate.get('value')}", file=sys.stderr)


def run_remote(server: str, request: AuditRequest, out: Path, poll_s: float = 1.0) -> int:
    """Run the audit through the API at ``server`` (its workers) with the typed client."""
    with Client(server) as assay:
        run = assay.start_audit(request)
        print(f"audit {run.id} started", file=sys.stderr)
        started = time.monotonic()

        def progress(audit: Audit) -> None:
            prog = audit.progress or {}
            print(_bar(prog.get("done", 0), prog.get("total", 0), started), end="", file=sys.stderr)

        final = assay.wait_audit(run.id, timeout=float("inf"), poll_s=poll_s, on_progress=progress)
        print(file=sys.stderr)
        if final.status != Status.SUCCEEDED:
            print(f"error: audit {run.id} {final.status}: {getattr(final, 'error', None)}", file=sys.stderr)
            return 2
        record = assay.audit_report(run.id, "json")
    _write(record, out)
    return _exit_code(record)


def run_embedded(request: AuditRequest, out: Path) -> int:
    """Run the audit in this process on the local store, chunk by chunk, with the workers' runner."""
    from evaluators.audit.runner import chunks, work_items
    from evaluators.audit.suites import load_suite
    from workers.audit import audit_runner
    from workers.settings import worker_settings

    settings = worker_settings()
    runner = audit_runner()
    lp = runner.policies.get(request.policy)
    run = runner.create(
        lp,
        load_suite(request.suite),
        model=request.model or settings.default_model,
        queue="embedded",
        params=lp.policy.generation.resolve(request.params, policy=lp.name),
        samples_per_prompt=request.samples_per_prompt,
    )
    runner.repo.mark_started(run.id)
    print(f"audit {run.id}: {run.total} items, embedded", file=sys.stderr)
    started = time.monotonic()
    done = 0
    for chunk in chunks([w.key for w in work_items(run)], settings.audit_chunk_size):
        done += runner.run_chunk(run.id, chunk, worker="embedded")
        print(_bar(done, run.total, started), end="", file=sys.stderr)
    print(file=sys.stderr)
    runner.maybe_finalize(run.id)
    final = runner.repo.get_run(run.id)
    if final is None or final.report is None:
        print(
            f"error: audit {run.id} did not finish: {final.status if final else 'missing'}", file=sys.stderr
        )
        return 2
    _write(final.report, out)
    return _exit_code(final.report)


def cmd_audit_run(args: Any) -> int:
    suite: str | dict[str, Any] = args.suite
    if args.suite.endswith((".yaml", ".yml", ".jsonl")) and Path(args.suite).is_file():
        from evaluators.audit.suites import load_suite_file

        suite = load_suite_file(Path(args.suite)).suite.model_dump(mode="json")
    try:
        request = AuditRequest.model_validate(
            {
                "suite": suite,
                "model": args.model,
                "policy": args.policy,
                "samples_per_prompt": args.samples,
                "params": json.loads(args.params) if args.params else {},
            }
        )
    except ValidationError as exc:
        raise InputError(f"invalid audit request: {exc}") from exc
    out = Path(args.out)
    try:
        if args.server:
            return run_remote(args.server, request, out)
        return run_embedded(request, out)
    except AssayClientError as exc:
        print(f"error: {args.server}: {exc}", file=sys.stderr)
        return 2


def cmd_audit_report(args: Any) -> int:
    out = Path(args.out)
    if args.server:
        try:
            with Client(args.server) as assay:
                record = assay.audit_report(args.id, "json")
        except AssayClientError as exc:
            print(f"error: {args.server}: {exc}", file=sys.stderr)
            return 2
    else:
        from workers.audit import run_store

        run = run_store().get_run(args.id)
        if run is None or run.report is None:
            print(f"error: no finished audit {args.id} in the local store", file=sys.stderr)
            return 2
        record = run.report
    _write(record, out)
    return _exit_code(record)
