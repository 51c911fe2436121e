"""Drift end to end on real processes: API, a Celery worker, Celery beat, Redis, SQLite, a webhook.

- Moderation traffic is recorded by the API; a report requested over HTTP is built by the worker,
  read back as JSON and as HTML (and the HTML renders in headless Chromium when it is installed).
- A generation job's result carries ``drift`` scored against the policy's baseline.
- Beat produces scheduled reports from ASSAY_DRIFT_SCHEDULE; one that finds drift alerts a webhook
  (a real HTTP server here) that fails its first two deliveries, so the alert is retried.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.drift_traffic import SUPPORT_QUESTIONS, TrafficShape, random_pool, synthetic_events
from devstack.stack import Stack, StackError, start_stack
from store.db import database, reset_stores
from store.drift import DriftStore

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TEXTS = SUPPORT_QUESTIONS


class Webhook:
    """A real HTTP receiver that answers 503 to its first ``failures`` requests, then 200."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[tuple[int, dict[str, Any]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                status = 503 if len(hook.received) < hook.failures else 200
                hook.received.append((status, body))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook(failures=2)
    yield hook
    hook.server.shutdown()


@pytest.fixture(scope="module")
def drift_stack(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, webhook: Webhook
) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("drift-stack")
    env = {
        "ASSAY_DRIFT_SCHEDULE": "strict=3s",
        "ASSAY_DRIFT_WEBHOOK_URL": webhook.url,
        "ASSAY_DRIFT_WEBHOOK_BACKOFF_S": "0.2",
        "ASSAY_DRIFT_PROFILE_TTL_S": "1",
    }
    try:
        st = start_stack(redis_url, data, extra_env=env)
    except StackError as exc:
        pytest.fail(str(exc))
    log = data / "beat.log"
    st.logs.append(log)
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat", "--loglevel", "INFO",
         "--schedule", str(data / "beat-schedule"), "--max-interval", "1"],
        env=st.env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    yield st
    os.killpg(beat.pid, signal.SIGTERM)
    beat.wait(timeout=20)
    st.close()
    reset_stores()


def _until(what: str, check: Any, st: Stack, timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{st.dump_logs()}")


def _acknowledged(c: httpx.Client) -> int:
    return int(c.get("/v1/drift/recorder").json()["recorder"]["acknowledged"])


def _baseline_of_traffic(c: httpx.Client, st: Stack, name: str, *, batches: int) -> dict[str, str]:
    """Moderate ``batches`` x 6 support questions, wait until stored, name this hour's traffic ``name``."""
    now = dt.datetime.now(dt.UTC)
    window = {
        "from": (now - dt.timedelta(hours=1)).isoformat(),
        "to": (now + dt.timedelta(hours=1)).isoformat(),
    }
    before = _acknowledged(c)
    for _ in range(batches):
        assert c.post("/v1/moderate/batch", json={"texts": TEXTS, "policy": "default"}).status_code == 200
    _until("the events acknowledged", lambda: _acknowledged(c) >= before + batches * len(TEXTS), st)
    r = c.post("/v1/drift/baselines", json={"name": name, "policy": "default", **window})
    assert r.status_code == 201, r.text
    return window


def test_a_requested_report_is_built_by_a_worker_as_json_and_html(drift_stack: Stack, tmp_path: Path) -> None:
    with drift_stack.client() as c:
        window = _baseline_of_traffic(c, drift_stack, "today", batches=20)

        r = c.post(
            "/v1/drift/reports", json={"policy": "default", "baseline": {"name": "today"}, "window": window}
        )
        assert r.status_code == 202, r.text
        report_id = r.json()["id"]
        body = _until(
            "the report",
            lambda: (
                (b := c.get(f"/v1/drift/reports/{report_id}").json())["status"] in ("succeeded", "failed")
                and b
            ),
            drift_stack,
        )
        assert body["status"] == "succeeded", body
        report = body["report"]
        # The same traffic on both sides: every judged signal passes.
        assert report["verdict"] == "ok" and report["drifted"] == [] and report["baseline"]["name"] == "today"
        output = {s["name"]: s for s in report["signals"]}
        assert output["output.embedding"]["n_window"] >= 120
        for stat in output["output.scores.toxicity.insult"]["statistics"]:
            assert (
                set(stat) >= {"name", "value", "threshold", "p_value", "verdict"} and stat["verdict"] == "ok"
            )
        html = c.get(f"/v1/drift/reports/{report_id}", params={"format": "html"})
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        assert "NO DRIFT" in html.text and "output.embedding" in html.text
        listed = c.get("/v1/drift/reports", params={"policy": "default"}).json()["reports"]
        assert report_id in {r["id"] for r in listed}

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no headless Chromium on this machine to render the page")
    page, shot = tmp_path / "drift.html", tmp_path / "drift.png"
    page.write_text(html.text, encoding="utf-8")
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600",
         f"--screenshot={shot}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_generation_results_carry_drift(drift_stack: Stack) -> None:
    with drift_stack.client() as c:
        _baseline_of_traffic(c, drift_stack, "gen", batches=3)
        r = c.post(
            "/v1/generations",
            params={"wait": 120},
            json={"prompt": "Where is my order?", "params": {"temperature": 0, "max_new_tokens": 8}},
        )
        assert r.status_code == 200, r.text
        result = r.json()["result"]
    drift = result["drift"]
    assert drift["stage"] == "output" and drift["status"] == "scored", drift
    assert drift["baseline"] in ("today", "gen") and 0 <= drift["novelty"] <= 100
    assert "toxicity.toxicity" in drift["scores"]


def test_beat_schedules_reports_and_a_drift_alert_is_retried(drift_stack: Stack, webhook: Webhook) -> None:
    # Plant traffic for the scheduled policy: a calm day last week, and toxic outputs now.
    db = DriftStore(database(drift_stack.env["ASSAY_DATABASE_URL"]), seed=3)
    pool = [(random_pool(60, seed=9), 1.0)]
    week_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=7)
    calm = synthetic_events(
        600, shape=TrafficShape(), pools=pool, start=week_ago, end=week_ago + dt.timedelta(hours=1),
        seed=1, policy="strict",
    )  # fmt: skip
    db.write(calm)
    now = dt.datetime.now(dt.UTC)
    for start in (now - dt.timedelta(minutes=1), now + dt.timedelta(hours=1)):  # this hour, and the next
        toxic = synthetic_events(
            600, shape=TrafficShape(toxic_rate=0.4), pools=pool, start=start,
            end=start + dt.timedelta(seconds=50), seed=2, policy="strict",
        )  # fmt: skip
        db.write(toxic)
    window = {"from": week_ago.isoformat(), "to": (week_ago + dt.timedelta(hours=1)).isoformat()}
    with drift_stack.client() as c:
        assert (
            c.post("/v1/drift/baselines", json={"name": "calm", "policy": "strict", **window}).status_code
            == 201
        )

        def scheduled_drift() -> list[dict[str, Any]]:
            reports = c.get("/v1/drift/reports", params={"policy": "strict", "trigger": "schedule"}).json()
            return [r for r in reports["reports"] if r.get("verdict") == "drift" and r.get("alert")]

        alerted = _until("a scheduled drift report with its alert", scheduled_drift, drift_stack)
    first = alerted[-1]  # oldest first alerted
    assert first["trigger"] == "schedule" and "output.scores.toxicity.toxicity" in first["drifted"]
    assert first["alert"] == {"delivered": True, "attempts": 3, "status": 200}
    statuses = [status for status, body in webhook.received if body["report_id"] == first["id"]]
    assert statuses == [503, 503, 200]
    sent = webhook.received[0][1]
    assert sent["verdict"] == "drift" and sent["policy"] == "strict" and sent["baseline"]["name"] == "calm"
