"""Drift events in the store, on SQLite and PostgreSQL: per-hour sketches, durable once acknowledged."""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text

from devstack.drift_traffic import TrafficShape, random_pool, synthetic_events
from evaluators.contracts.drift import Baseline, DriftEvent, DriftReportRequest, TimeRange
from evaluators.drift.config import DriftPolicy
from evaluators.drift.recorder import DriftRecorder
from evaluators.drift.report import build_report
from evaluators.drift.sketch import RESERVOIR
from evaluators.errors import Conflict
from store.db import MIGRATIONS, database, reset_stores
from store.drift import DriftStore
from store.models import DriftBucket
from tests.integration.test_store import db_url  # noqa: F401  (the SQLite / PostgreSQL fixture)

T0 = dt.datetime(2026, 3, 1, 9, tzinfo=dt.UTC)
HOURS = TimeRange.of(T0, T0 + dt.timedelta(hours=3))


def _traffic(n: int, seed: int, *, stage: str = "output", start: dt.datetime = T0) -> list[DriftEvent]:
    return synthetic_events(
        n,
        shape=TrafficShape(toxic_rate=0.1),
        pools=[(random_pool(64, seed=7), 1.0)],
        start=start,
        end=start + dt.timedelta(hours=3),
        seed=seed,
        stage=stage,  # type: ignore[arg-type]
    )


def test_migration_0002_adds_the_drift_tables(db_url: str) -> None:  # noqa: F811
    db = database(db_url)
    tables = set(inspect(db.engine).get_table_names())
    assert {"drift_buckets", "drift_baselines", "drift_reports"} <= tables
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(cfg)
    with db.engine.connect() as c:
        version = c.execute(text("select version_num from alembic_version")).scalar()
    assert version == script.get_current_head()
    drift = script.get_revision("0002")
    assert drift is not None and drift.down_revision == "0001"


def test_acknowledged_events_are_in_the_store_pre_aggregated(db_url: str) -> None:  # noqa: F811
    events = _traffic(1500, seed=1) + _traffic(1500, seed=2, stage="input")
    recorder = DriftRecorder(DriftStore(database(db_url), seed=0).write, batch=400, interval_s=0.01)
    for i in range(0, len(events), 100):
        assert recorder.record(events[i : i + 100]) == 100
    assert recorder.flush(timeout=60)
    stats = recorder.stats()
    assert stats.acknowledged == 3000 and stats.dropped == 0 and stats.failed == 0
    recorder.close()

    reset_stores()  # a new connection pool, as another process would have: only committed rows count
    store = DriftStore(database(db_url))
    merged = store.sketches("default", window=HOURS)
    for stage in ("input", "output"):
        mine = [e for e in events if e.stage == stage]
        m = merged[stage]
        assert m.count == 1500 and m.buckets == 3  # one row per hour and stage, for this one writer
        assert dict(m.actions) == dict(Counter(e.action.value for e in mine))
        assert dict(m.entities) == dict(sum((Counter(e.entities) for e in mine), Counter()))
        assert int(m.scores["toxicity.insult"].sum()) == 1500
        assert m.embedded == sum(e.embedding is not None for e in mine)
        assert all(len(r) == min(RESERVOIR, seen) for r, seen in m.parts)
    assert store.count_events("default") == 3000
    # Only the window's hours are read; audit items (run_id) are apart from live traffic.
    later = store.sketches(
        "default", window=TimeRange.of(T0 + dt.timedelta(hours=2), T0 + dt.timedelta(hours=5))
    )
    assert 0 < later["output"].count < 1500
    assert store.sketches("default", window=HOURS, run_id="some-audit")["output"].count == 0


def test_two_processes_write_the_same_hours_side_by_side(db_url: str) -> None:  # noqa: F811
    api, worker = DriftStore(database(db_url), seed=1), DriftStore(database(db_url), seed=2)
    errors: list[BaseException] = []

    def write(store: DriftStore, seed: int) -> None:
        try:
            events = _traffic(1200, seed=seed)
            for i in range(0, 1200, 150):
                store.write(events[i : i + 150])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, i)) for i, s in ((10, api), (11, worker))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert DriftStore(database(db_url)).sketches("default", window=HOURS)["output"].count == 2400
    with database(db_url).session() as s:
        writers = s.scalars(select(func.count(func.distinct(DriftBucket.writer)))).one()
    assert writers == 2


def test_baselines_and_reports_round_trip(db_url: str) -> None:  # noqa: F811
    store = DriftStore(database(db_url))
    store.write(_traffic(300, seed=3))
    b = store.create_baseline(
        Baseline(name="launch", policy="default", start=T0, end=T0 + dt.timedelta(hours=3))
    )
    assert b.created_at is not None and b.start == T0 and b.spec().window() == HOURS
    with pytest.raises(Conflict, match="already has a baseline named 'launch'"):
        store.create_baseline(Baseline(name="launch", policy="default", audit="r1"))
    store.create_baseline(Baseline(name="audit-1", policy="default", model="other-model", audit="r1"))
    assert store.current_baseline("default", "smollm2") == b  # the newest for another model is skipped
    assert store.current_baseline("default", "other-model").name == "audit-1"  # type: ignore[union-attr]
    assert store.current_baseline("default", name="launch") == b
    assert store.current_baseline("strict") is None

    request = DriftReportRequest.model_validate(
        {
            "policy": "default",
            "baseline": {"name": "launch"},
            "window": {"from": T0, "to": T0 + dt.timedelta(hours=1)},
        }
    )
    record = store.create_report("rep1", request, "api")
    assert record.status == "queued" and record.request == request
    assert store.mark_report_running("rep1")
    merged = store.sketches("default", window=HOURS)
    report = build_report(
        report_id="rep1",
        policy_name="default",
        policy=DriftPolicy(),
        baseline=merged,
        window=merged,
        baseline_info={"name": "launch"},
        window_info=request.window.wire(),
    )
    assert store.finish_report("rep1", report)
    assert not store.fail_report("rep1", "late")  # a finished report keeps its outcome
    store.set_alert("rep1", {"delivered": True, "attempts": 1})
    done = store.report("rep1")
    assert done is not None and done.status == "succeeded" and done.report == report
    assert done.alert == {"delivered": True, "attempts": 1} and done.finished_at is not None
    assert [r.id for r in store.reports("default")] == ["rep1"] and store.reports("strict") == []
