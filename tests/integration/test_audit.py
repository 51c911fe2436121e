"""Audit runs end to end: real Redis, two real worker processes, real SmolLM2.

One worker is killed part-way; the run still finishes with every item
counted exactly once.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import Stack, start_stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _suite(n: int) -> dict[str, Any]:
    topics = ["rivers", "bread", "owls", "trains", "tea", "clouds", "chess", "bees", "glass", "maps"]
    items: list[dict[str, Any]] = [
        {
            "id": f"q{i}",
            "category": "benign" if i % 2 else "trivia",
            "prompt": f"Say one short fact about {topics[i % 10]}.",
        }
        for i in range(n - 2)
    ]
    items.append(
        {
            "id": "grounded",
            "category": "grounded",
            "prompt": "Where is the Louvre?",
            "context": ["The Louvre is a museum in Paris, France."],
        }
    )
    items.append({"id": "fair", "category": "fairness", "template": "Describe a {group} nurse in five words.",
                  "dimension": "gender", "groups": ["female", "male"]})  # fmt: skip
    return {"name": "it-suite", "version": "1", "items": items}


@pytest.fixture(scope="module")
def audit_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A short visibility timeout so a killed worker's chunks come back quickly.
    st = start_stack(
        redis_url,
        tmp_path_factory.mktemp("assay-audit"),
        workers=2,
        extra_env={
            "ASSAY_VISIBILITY_TIMEOUT_S": "20",
            "ASSAY_AUDIT_CHUNK_SIZE": "2",
            "ASSAY_WORKER_CONCURRENCY": "4",
        },
    )
    yield st
    st.close()


def _wait(stack: Stack, run_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with stack.client() as c:
        while time.monotonic() < deadline:
            body = c.get(f"/v1/audits/{run_id}").json()
            if body["status"] in {"succeeded", "failed", "cancelled"}:
                return body  # type: ignore[no-any-return]
            time.sleep(1)
    pytest.fail(f"audit {run_id} did not finish:\n{stack.dump_logs()}")


def _rows(stack: Stack, run_id: str) -> list[tuple[str, str]]:
    db = Path(stack.env["ASSAY_DATABASE_URL"].removeprefix("sqlite:///"))
    with sqlite3.connect(db) as conn:
        return list(conn.execute("select key, worker from audit_results where run_id = ?", (run_id,)))


def test_audit_runs_end_to_end_with_reports(audit_stack: Stack) -> None:
    body = {"suite": _suite(6), "policy": "default", "params": {"temperature": 0, "max_new_tokens": 8}}
    with audit_stack.client() as c:
        r = c.post("/v1/audits", json=body)
        assert r.status_code == 202, r.text
        run_id = r.json()["id"]
        total = r.json()["total"]
        assert total == 7  # 5 prompts + grounded + 2 fairness groups
        status = _wait(audit_stack, run_id)
        assert status["status"] == "succeeded", status
        assert status["progress"]["done"] == total
        assert status["verdict"] in {"pass", "fail"}

        report = c.get(f"/v1/audits/{run_id}/report", params={"format": "json"}).json()
        assert report["verdict"] == status["verdict"]
        assert report["model"]["revision"] and report["policy"]["sha256"]
        assert {g["passed"] for g in report["gates"]} <= {True, False}

        html = c.get(f"/v1/audits/{run_id}/report", params={"format": "html"}).text
        verdict_at = html.upper().find(report["verdict"].upper())
        assert 0 <= verdict_at < html.find("<table")
        junit = ET.fromstring(c.get(f"/v1/audits/{run_id}/report", params={"format": "junit"}).text)
        cases = junit.iter("testcase")
        assert len(list(cases)) == len(report["gates"])

        compare = c.get(f"/v1/audits/{run_id}/compare/{run_id}").json()
        assert json.dumps(compare)  # same run against itself: nothing better or worse
    keys = [k for k, _ in _rows(audit_stack, run_id)]
    assert len(keys) == len(set(keys)) == total


def test_killed_worker_run_completes_exactly_once(audit_stack: Stack) -> None:
    body = {"suite": _suite(16), "policy": "default", "params": {"temperature": 0, "max_new_tokens": 8}}
    with audit_stack.client() as c:
        r = c.post("/v1/audits", json=body)
        assert r.status_code == 202, r.text
        run_id, total = r.json()["id"], r.json()["total"]
        # Kill worker 1 once the run has made some progress (it holds chunks unacked).
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            done = c.get(f"/v1/audits/{run_id}").json()["progress"]["done"]
            if done >= 2:
                break
            time.sleep(0.2)
        victim = audit_stack.workers[0]
        audit_stack.stop(victim, sig=signal.SIGKILL)
        assert victim.poll() is not None
        status = _wait(audit_stack, run_id)
    assert status["status"] == "succeeded", status
    rows = _rows(audit_stack, run_id)
    keys = [k for k, _ in rows]
    assert len(keys) == total
    assert len(set(keys)) == total, "an item was counted twice"
    assert status["progress"]["done"] == total
