"""Drift alerts against a real local HTTP receiver: retried with exponential backoff, never on a refusal."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from evaluators.contracts.drift import DriftReport
from workers.drift import scheduled_window, send_alert
from workers.settings import WorkerSettings, period_seconds


class Receiver:
    """Answers each POST with the next status of ``statuses`` (then the last one), keeping the bodies."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(outer.statuses[min(len(outer.bodies), len(outer.statuses)) - 1])
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    r = Receiver(request.param)
    yield r
    r.server.shutdown()


REPORT = DriftReport(
    id="r1",
    policy="default",
    baseline={"name": "launch", "events": {"output": 500}},
    window={
        "from": "2026-05-01T00:00:00+00:00",
        "to": "2026-05-02T00:00:00+00:00",
        "events": {"output": 300},
    },
    verdict="drift",
    drifted=("output.actions",),
    created_at=dt.datetime(2026, 5, 2, tzinfo=dt.UTC),
)


def _settings(url: str, retries: int = 4) -> WorkerSettings:
    return WorkerSettings(drift_webhook_url=url, drift_webhook_retries=retries, drift_webhook_backoff_s=0.2)


@pytest.mark.parametrize("receiver", [[503, 429, 502, 200]], indirect=True)
def test_failures_are_retried_with_exponential_backoff(receiver: Receiver) -> None:
    waits: list[float] = []
    outcome = send_alert(REPORT, _settings(receiver.url), sleep=waits.append)
    assert outcome == {"delivered": True, "attempts": 4, "status": 200}
    assert waits == [0.2, 0.4, 0.8] and len(receiver.bodies) == 4
    body = receiver.bodies[-1]
    assert body["report_id"] == "r1" and body["verdict"] == "drift" and body["drifted"] == ["output.actions"]
    assert body["links"]["html"] == "/v1/drift/reports/r1?format=html"


@pytest.mark.parametrize("receiver", [[503]], indirect=True)
def test_an_alert_that_never_lands_is_reported_not_raised(receiver: Receiver) -> None:
    outcome = send_alert(REPORT, _settings(receiver.url, retries=2), sleep=lambda _s: None)
    assert outcome == {"delivered": False, "attempts": 3, "error": "HTTP 503"}


@pytest.mark.parametrize("receiver", [[400]], indirect=True)
def test_a_refusal_is_not_retried(receiver: Receiver) -> None:
    outcome = send_alert(REPORT, _settings(receiver.url), sleep=lambda _s: None)
    assert outcome == {"delivered": False, "attempts": 1, "error": "HTTP 400"} and len(receiver.bodies) == 1


def test_an_unreachable_webhook_is_retried_then_given_up() -> None:
    from devstack.redis import free_port

    waits: list[float] = []
    outcome = send_alert(
        REPORT, _settings(f"http://127.0.0.1:{free_port()}/x", retries=1), sleep=waits.append
    )
    assert outcome["delivered"] is False and outcome["attempts"] == 2 and outcome["error"] == "ConnectError"
    assert waits == [0.2]


def test_scheduled_windows_follow_the_clock() -> None:
    now = dt.datetime(2026, 5, 3, 14, 27, 5, tzinfo=dt.UTC)
    hourly = scheduled_window("hourly", now)
    assert (hourly.start, hourly.end) == (
        now.replace(hour=13, minute=0, second=0),
        now.replace(minute=0, second=0),
    )
    daily = scheduled_window("daily", now)
    assert daily.start == dt.datetime(2026, 5, 2, tzinfo=dt.UTC) and daily.end == dt.datetime(
        2026, 5, 3, tzinfo=dt.UTC
    )
    assert scheduled_window("90s", now).start == now - dt.timedelta(seconds=90)
    assert period_seconds("hourly") == 3600 and period_seconds("2.5s") == 2.5
    with pytest.raises(ValueError, match="not hourly, daily"):
        period_seconds("weekly")
    with pytest.raises(ValueError, match="POLICY=PERIOD"):
        WorkerSettings(drift_schedule="default")  # type: ignore[arg-type]
