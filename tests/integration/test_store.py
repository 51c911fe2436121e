"""The durable store on SQLite and PostgreSQL: migrations, job transitions, exactly-once results."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, inspect, text

from workers.store import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    AuditRun,
    AuditStore,
    Job,
    JobStore,
    PolicyRecord,
)

PG_ADMIN = os.environ.get("ASSAY_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _pg_available() -> bool:
    try:
        with create_engine(PG_ADMIN, connect_args={"connect_timeout": 2}).connect() as c:
            c.execute(text("select 1"))
        return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/assay.db"
        return
    if not _pg_available():
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN}")
    name = f"assay_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _job(job_id: str) -> Job:
    return Job(
        id=job_id,
        status=QUEUED,
        model="smollm2",
        queue="cpu",
        policy_name="default",
        policy_sha256="a" * 64,
        prompt_sha256="b" * 64,
        params={"temperature": 0},
    )


def test_migrations_create_the_schema_at_head(db_url: str) -> None:
    store = JobStore(db_url)
    JobStore(db_url)  # a second process starting on the same database is a no-op
    tables = set(inspect(store.engine).get_table_names())
    assert {"jobs", "audit_runs", "audit_results", "policies", "models", "alembic_version"} <= tables
    with store.engine.connect() as c:
        assert c.execute(text("select version_num from alembic_version")).scalar() == "0001"
    store.dispose()


def test_job_outcome_is_recorded_once(db_url: str) -> None:
    store = JobStore(db_url)
    store.create(_job("j1"))
    assert store.mark_running("j1")
    assert store.get("j1").status == RUNNING  # type: ignore[union-attr]
    assert store.finish("j1", SUCCEEDED, result={"output": "Paris"})
    # A redelivered copy finishing later must not overwrite the first outcome.
    assert not store.finish("j1", FAILED, error={"detail": "late duplicate"})
    job = store.get("j1")
    assert job is not None and job.status == SUCCEEDED and job.result == {"output": "Paris"}
    assert not store.mark_running("j1")

    store.create(_job("j2"))
    assert store.cancel("j2")
    assert store.is_cancelled("j2")
    assert not store.mark_running("j2")
    assert store.get("j2").status == CANCELLED  # type: ignore[union-attr]
    store.dispose()


def test_audit_results_count_exactly_once(db_url: str) -> None:
    store = JobStore(db_url)
    audits = AuditStore(store)
    run = AuditRun(
        id="r1", status=QUEUED, suite_name="s", suite_sha256="c" * 64, suite={"items": []}, model="m",
        queue="cpu", policy_name="default", policy_sha256="a" * 64, params={}, samples_per_prompt=1, total=2,
    )  # fmt: skip
    policy = PolicyRecord(sha256="a" * 64, name="default", version="1", content="name: default")
    audits.create_run(run, policy)
    # The same policy version recorded by a second run is not duplicated.
    run2 = AuditRun(**{**{c.name: getattr(run, c.name) for c in AuditRun.__table__.columns}, "id": "r2"})
    audits.create_run(run2, policy)
    assert audits.mark_started("r1")
    kw = {"item_id": "i1", "category": "c", "group": None, "status": SUCCEEDED, "worker": "w1"}
    assert audits.add_result("r1", key="i1##0", result={"action": "allow"}, **kw)
    assert not audits.add_result("r1", key="i1##0", result={"action": "block"}, **kw)
    assert audits.count_results("r1") == 1
    assert audits.results("r1")[0].result == {"action": "allow"}
    assert audits.done_keys("r1") == {"i1##0"}
    assert audits.finish_run("r1", SUCCEEDED, report={"verdict": "pass"})
    assert not audits.finish_run("r1", FAILED)
    assert audits.get_run("r1").report == {"verdict": "pass"}  # type: ignore[union-attr]
    store.dispose()
