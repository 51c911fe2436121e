"""``assay.client`` against a real stack (API, Redis, a Celery worker, SmolLM2), and the CLI's --server."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from assay.client import AsyncClient, Client
from assay.errors import BadRequest, Conflict, NotFound, Unprocessable
from devstack.stack import Stack
from evaluators.contracts import AuditRequest, Status
from evaluators.findings import Action

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

QUESTION = "What is the capital of France?"


def test_moderate_and_policies(stack: Stack) -> None:
    with Client(stack.base_url) as assay:
        decision = assay.moderate("Mail jane.doe@example.com", stage="input")
        assert decision.action is Action.REDACT
        assert decision.text is not None and "<EMAIL_ADDRESS>" in decision.text
        assert decision.findings[0].label == "EMAIL_ADDRESS" and decision.findings[0].span is not None
        batch = assay.moderate_batch(["hello", "I will kill you"], policy="strict")
        assert [r.action for r in batch.results] == [Action.ALLOW, Action.BLOCK]
        assert batch.policy.name == "strict"
        names = {p.name for p in assay.policies()}
        assert {"default", "strict"} <= names
        assert assay.policy("strict")["policy"]["name"] == "strict"


def test_generation_jobs_end_to_end(stack: Stack) -> None:
    with Client(stack.base_url, timeout=120) as assay:
        job = assay.generate(QUESTION, params={"temperature": 0, "max_new_tokens": 16}, wait=110)
        assert job.status is Status.SUCCEEDED and job.result is not None
        assert job.result.output and "Paris" in job.result.output
        assert job.result.usage.completion_tokens > 0
        assert assay.job(job.id).result == job.result
        queued = assay.generate(messages=[{"role": "user", "content": "hi"}], model="parked-model")
        assert queued.status is Status.QUEUED
        assert assay.cancel_job(queued.id).status is Status.CANCELLED
        with pytest.raises(Conflict):
            assay.cancel_job(queued.id)


def test_problem_details_become_typed_errors(stack: Stack) -> None:
    with Client(stack.base_url) as assay:
        with pytest.raises(NotFound) as missing:
            assay.job("nope")
        assert missing.value.code == "not-found" and "nope" in missing.value.detail
        with pytest.raises(Unprocessable) as limits:
            assay.generate("hi", params={"max_new_tokens": 5000})
        assert "max_new_tokens" in limits.value.detail
        with pytest.raises(NotFound) as policy:
            assay.moderate("hi", policy="nope")
        assert policy.value.code == "policy-not-found"
        with pytest.raises(BadRequest):
            assay.moderate_batch([], policy="default")


def test_async_client(stack: Stack) -> None:
    async def run() -> tuple[Action, str | None]:
        async with AsyncClient(stack.base_url, timeout=120) as assay:
            decisions = await asyncio.gather(
                *(assay.moderate(t) for t in ["hello", "You idiot, I will kill you"])
            )
            job = await assay.generate(QUESTION, params={"temperature": 0, "max_new_tokens": 12})
            done = await assay.wait_job(job.id, timeout=110)
            assert decisions[0].action is Action.ALLOW
            assert done.result is not None
            return decisions[1].action, done.result.output

    action, output = asyncio.run(run())
    assert action is Action.BLOCK and output and "Paris" in output


def test_drift_reports(stack: Stack) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    week = dt.timedelta(days=7)
    request = {
        "policy": "default",
        "window": {"from": (now - dt.timedelta(hours=1)).isoformat(), "to": now.isoformat()},
        "baseline": {
            "from": (now - week).isoformat(),
            "to": (now - week + dt.timedelta(hours=1)).isoformat(),
        },
    }
    with Client(stack.base_url) as assay:
        report = assay.create_drift_report(request)
        assert report.status and not report.terminal
        deadline = 100
        while not (current := assay.drift_report(report.id)).terminal and deadline:
            deadline -= 1
            asyncio.run(asyncio.sleep(0.5))
        assert current.terminal, current
        assert report.id in {r.id for r in assay.drift_reports(policy="default")}
        with pytest.raises(NotFound):
            assay.drift_report("nope")


def test_cli_audit_run_through_the_server(stack: Stack, tmp_path: Path) -> None:
    suite = {
        "name": "cli-remote",
        "version": "1",
        "items": [{"id": "hi", "category": "general", "prompt": "Say hi."}],
    }
    (tmp_path / "suite.yaml").write_text(json.dumps(suite), encoding="utf-8")
    out = tmp_path / "reports"
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", "audit", "run", "--suite", str(tmp_path / "suite.yaml"),
         "--policy", "default", "--params", '{"temperature": 0, "max_new_tokens": 8}',
         "--server", stack.base_url, "--out", str(out)],
        env=dict(os.environ), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "started" in proc.stderr, proc.stderr
    reports = sorted(out.glob("audit-*"))
    assert len(reports) == 3, proc.stderr
    record = json.loads(next(p for p in reports if p.suffix == ".json").read_text(encoding="utf-8"))
    assert proc.returncode == (0 if record["verdict"] == "pass" else 1), proc.stderr
    assert record["counts"]["items"] == 1
    # The same report through the client, and the CLI's report command over the server.
    with Client(stack.base_url) as assay:
        assert assay.audit_report(record["id"])["id"] == record["id"]
    again = subprocess.run(
        [sys.executable, "-m", "service.cli", "audit", "report", record["id"], "--server", stack.base_url,
         "--out", str(tmp_path / "again")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == proc.returncode, again.stderr
    unreachable = subprocess.run(
        [sys.executable, "-m", "service.cli", "audit", "report", "x", "--server", "http://127.0.0.1:9",
         "--out", str(tmp_path / "none")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr


def test_audit_calls(stack: Stack) -> None:
    suite = {
        "name": "client",
        "version": "1",
        "items": [{"id": "a", "category": "general", "prompt": "Say a."}],
    }
    request = AuditRequest.model_validate({"suite": suite, "params": {"temperature": 0, "max_new_tokens": 6}})
    with Client(stack.base_url) as assay:
        run = assay.start_audit(request)
        seen: list[Status] = []
        final = assay.wait_audit(run.id, timeout=200, poll_s=0.5, on_progress=lambda a: seen.append(a.status))
        assert final.status is Status.SUCCEEDED and seen[-1] is Status.SUCCEEDED
        assert "<testsuite" in assay.audit_report(run.id, "junit")
        assert assay.resume_audit(run.id)["resent"] == 0
        same = assay.compare_audits(run.id, run.id)
        assert same["same_suite"] and same["a"]["id"] == same["b"]["id"] == run.id
