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

import httpx

from evaluators.errors import AssayError


def _bar(done: int, total: int, started: float, width: int = 30) -> str:
    frac = done / total if total else 1.0
    filled = int(frac * width)
    rate = done / max(1e-9, time.monotonic() - started) * 60
    return f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} items  {rate:5.1f}/min"


def _exit_code(record: dict[str, Any]) -> int:
    return 0 if record.get("verdict") == "pass" else 1


def _write(record: dict[str, Any], out: Path) -> None:
    from service.routes.audits import write_reports

    for path in write_reports(record, out):
        print(f"wrote {path}", file=sys.stderr)
    print(f"verdict: {record.get('verdict', '?').upper()}", file=sys.stderr)
    for gate in record.get("gates", []):
        mark = "ok  " if gate.get("passed") else "FAIL"
        print(f"  {mark} {gate.get('gate') or gate.get('expression')}: {gate.get('value')}", file=sys.stderr)


def run_remote(server: str, body: dict[str, Any], out: Path, poll_s: float = 1.0) -> int:
    with httpx.Client(base_url=server, timeout=60) as c:
        r = c.post("/v1/audits", json=body)
        if r.status_code != 202:
            print(f"error: {r.status_code} {r.text}", file=sys.stderr)
            return 2
        run_id = r.json()["id"]
        print(f"audit {run_id} started", file=sys.stderr)
        started = time.monotonic()
        while True:
            status = c.get(f"/v1/audits/{run_id}").json()
            prog = status.get("progress", {})
            print(_bar(prog.get("done", 0), prog.get("total", 0), started), end="", file=sys.stderr)
            if status["status"] in {"succeeded", "failed", "cancelled"}:
                print(file=sys.stderr)
                break
            time.sleep(poll_s)
        if status["status"] != "succeeded":
            print(f"error: audit {run_id} {status['status']}: {status.get('error')}", file=sys.stderr)
            return 2
        record = c.get(f"/v1/audits/{run_id}/report", params={"format": "json"}).json()
    _write(record, out)
    return _exit_code(record)


def run_embedded(body: dict[str, Any], out: Path) -> int:
    """Run the audit in this process on the local store, chunk by chunk."""
    from evaluators.policy import PolicyStore, load_policy_dir
    from evaluators.settings import evaluator_settings
    from service.routes.audits import load_suite
    from workers.audit import audit_store, chunks, create_run, maybe_finalize, run_chunk, work_items
    from workers.params import resolve_params
    from workers.settings import worker_settings

    settings = worker_settings()
    lp = PolicyStore(load_policy_dir(evaluator_settings().policy_dir)).get(body["policy"])
    suite = load_suite(body["suite"])
    samples = int(body.get("samples_per_prompt", 1))
    model = body.get("model") or settings.default_model
    run = create_run(
        lp, suite, model=model, queue="embedded", params=resolve_params(lp.policy, body.get("params")),
        samples_per_prompt=samples,
    )  # fmt: skip
    store = audit_store(settings)
    store.mark_started(run.id)
    print(f"audit {run.id}: {run.total} items, embedded", file=sys.stderr)
    started = time.monotonic()
    keys = [w.key for w in work_items(store.get_run(run.id) or run)]
    done = 0
    for chunk in chunks(keys, settings.audit_chunk_size):
        done += run_chunk(run.id, chunk, worker="embedded")
        print(_bar(done, run.total, started), end="", file=sys.stderr)
    print(file=sys.stderr)
    maybe_finalize(run.id)
    final = store.get_run(run.id)
    if final is None or final.report is None:
        print(
            f"error: audit {run.id} did not finish: {final.status if final else 'missing'}", file=sys.stderr
        )
        return 2
    _write(final.report, out)
    return _exit_code(final.report)


def cmd_audit_run(args: Any) -> int:
    body: dict[str, Any] = {
        "suite": args.suite,
        "model": args.model,
        "policy": args.policy,
        "samples_per_prompt": args.samples,
        "params": json.loads(args.params) if args.params else {},
    }
    if args.suite.endswith((".yaml", ".yml", ".jsonl")) and Path(args.suite).is_file():
        from evaluators.suites import load_suite_file

        body["suite"] = load_suite_file(Path(args.suite)).suite.model_dump(mode="json")
    out = Path(args.out)
    try:
        if args.server:
            return run_remote(args.server, body, out)
        return run_embedded(body, out)
    except AssayError:
        raise
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.server}: {exc}", file=sys.stderr)
        return 2


def cmd_audit_report(args: Any) -> int:
    out = Path(args.out)
    if args.server:
        with httpx.Client(base_url=args.server, timeout=60) as c:
            r = c.get(f"/v1/audits/{args.id}/report", params={"format": "json"})
            if r.status_code != 200:
                print(f"error: {r.status_code} {r.text}", file=sys.stderr)
                return 2
            record = r.json()
    else:
        from workers.audit import audit_store

        run = audit_store().get_run(args.id)
        if run is None or run.report is None:
            print(f"error: no finished audit {args.id} in the local store", file=sys.stderr)
            return 2
        record = run.report
    _write(record, out)
    return _exit_code(record)
