"""``assay drift baseline`` and ``assay drift report``, embedded, on a store holding planted traffic."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.drift_traffic import TrafficShape, random_pool, synthetic_events
from store.db import database, reset_stores
from store.drift import DriftStore

ROOT = Path(__file__).resolve().parents[2]
DAY = dt.datetime(2026, 4, 6, tzinfo=dt.UTC)


def _assay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    data = tmp_path / "data"
    url = f"sqlite:///{data / 'assay.db'}"
    store = DriftStore(database(url), seed=0)
    pool = [(random_pool(80, seed=4), 1.0)]
    for policy, shape in (("default", TrafficShape(toxic_rate=0.25)), ("strict", TrafficShape())):
        for day, seed, baseline_shape in ((DAY, 1, TrafficShape()), (DAY + dt.timedelta(days=1), 2, shape)):
            events = synthetic_events(
                800, shape=baseline_shape if day == DAY else shape, pools=pool, start=day,
                end=day + dt.timedelta(days=1), seed=seed, policy=policy,
            )  # fmt: skip
            store.write(events)
    reset_stores()
    return {
        **os.environ,
        "ASSAY_DATA_DIR": str(data),
        "ASSAY_DATABASE_URL": "",
        "ASSAY_POLICY_DIR": str(ROOT / "policies"),
    }


def test_embedded_report_exits_1_on_drift_and_writes_json_and_html(
    env: dict[str, str], tmp_path: Path
) -> None:
    for policy in ("default", "strict"):
        made = _assay(
            env, "drift", "baseline", "--name", "week1", "--policy", policy,
            "--from", DAY.isoformat(), "--to", (DAY + dt.timedelta(days=1)).isoformat(),
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        assert json.loads(made.stdout)["name"] == "week1"
    window = [
        "--from",
        (DAY + dt.timedelta(days=1)).isoformat(),
        "--to",
        (DAY + dt.timedelta(days=2)).isoformat(),
    ]
    out = tmp_path / "reports"

    drifted = _assay(env, "drift", "report", "--policy", "default", *window, "--out", str(out))
    assert drifted.returncode == 1, drifted.stderr
    assert "output: 800 baseline and 800 window events" in drifted.stderr  # progress
    assert "verdict: DRIFT" in drifted.stderr and "DRIFT output.scores.toxicity.toxicity" in drifted.stderr
    [json_file] = out.glob("drift-*.json")
    report = json.loads(json_file.read_text())
    assert (
        report["trigger"] == "cli" and report["baseline"]["name"] == "week1" and report["verdict"] == "drift"
    )
    html = json_file.with_suffix(".html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "DRIFT" in html and "output.actions" in html

    calm = _assay(env, "drift", "report", "--policy", "strict", *window, "--out", str(tmp_path / "calm"))
    assert calm.returncode == 0, calm.stderr
    assert "verdict: OK" in calm.stderr

    unknown = _assay(env, "drift", "report", "--policy", "strict", "--baseline", "nope", *window)
    assert unknown.returncode == 2 and "no baseline named 'nope'" in unknown.stderr
