"""The durable store on SQLite and PostgreSQL: migrations, job transitions, exactly-once results."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from pydantic import ValidationError
from sqlalchemy import create_engine, inspect, text

from evaluators.contracts import (
    AuditItemResult,
    AuditRun,
    JobError,
    JobResult,
    ModelInfo,
    PolicyIdentity,
    SamplingParams,
    Status,
)
from evaluators.findings import Action
from store.audits import AuditStore, audit_store
from store.db import Database, database, reset_stores
from store.jobs import JobStore, job_store
from store.records import JobRecord

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
        reset_stores()
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
        reset_stores()  # close the pooled connections before the database goes
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


PARAMS = SamplingParams(temperature=0)


def _result(output: str) -> JobResult:
    return JobResult(
        policy=PolicyIdentity(name="default", version="1", sha256="a" * 64),
        params=PARAMS,
        action=Action.ALLOW,
        output=output,
        model=ModelInfo(id="smollm2"),
    )


def _job(store: JobStore, job_id: str) -> JobRecord:
    return store.create(
        job_id=job_id,
        model="smollm2",
        queue="cpu",
        policy_name="default",
        policy_sha256="a" * 64,
        prompt_sha256="b" * 64,
        params=PARAMS,
    )


def test_migrations_create_the_schema_at_head(db_url: str) -> None:
    db = database(db_url)
    other = Database(db_url)  # a second process starting on the same database is a no-op
    other.dispose()
    tables = set(inspect(db.engine).get_table_names())
    assert {"jobs", "audit_runs", "audit_results", "policies", "models", "alembic_version"} <= tables
    with db.engine.connect() as c:
        assert c.execute(text("select version_num from alembic_version")).scalar() == "0004"
    columns = {col["name"] for col in inspect(db.engine).get_columns("jobs")}
    assert {"worker", "heartbeat_at", "tenant"} <= columns
    assert {"tenants", "api_keys"} <= tables


def test_one_database_per_url_until_reset(db_url: str) -> None:
    db = database(db_url)
    assert database(db_url) is db and job_store(db_url).db is db and audit_store(db_url).db is db
    reset_stores()
    assert database(db_url) is not db


def test_job_outcome_is_recorded_once(db_url: str) -> None:
    store = job_store(db_url)
    created = _job(store, "j1")
    assert created.status == Status.QUEUED and created.kind == "generation" and created.attempts == 0
    assert created.created_at is not None and created.params == PARAMS
    with pytest.raises(ValidationError):  # records are frozen copies, not live rows
        created.status = Status.RUNNING
    assert store.claim("j1", "w1", 60)
    assert store.get("j1").status == Status.RUNNING  # type: ignore[union-attr]
    assert store.finish("j1", Status.SUCCEEDED, result=_result("Paris"))
    # A redelivered copy finishing later must not overwrite the first outcome.
    assert not store.finish("j1", Status.FAILED, error=JobError(detail="late duplicate"))
    job = store.get("j1")
    assert job is not None and job.status == Status.SUCCEEDED and job.result == _result("Paris")
    assert not store.claim("j1", "w2", 60)

    _job(store, "j2")
    assert store.cancel("j2")
    assert not store.claim("j2", "w1", 60)
    cancelled = store.get("j2")
    assert cancelled is not None and cancelled.status == Status.CANCELLED
    assert cancelled.error == JobError(reason="cancelled by request")
    with store.db.engine.connect() as c:  # the column holds the plain value, on both databases
        assert c.execute(text("select status from jobs where id = 'j2'")).scalar() == "cancelled"
    assert store.get("missing") is None


def _run(audits: AuditStore, run_id: str, policy: PolicyIdentity) -> AuditRun:
    return audits.create_run(
        run_id=run_id, suite_name="s", suite_sha256="c" * 64, suite={"items": []}, model="m", queue="cpu",
        policy=policy, policy_text="name: default", params=SamplingParams(seed=3), samples_per_prompt=1,
        total=2,
    )  # fmt: skip


def test_audit_results_count_exactly_once(db_url: str) -> None:
    audits = audit_store(db_url)
    policy = PolicyIdentity(sha256="a" * 64, name="default", version="1")
    created = _run(audits, "r1", policy)
    assert (
        created.status == Status.QUEUED
        and created.policy_sha256 == "a" * 64
        and created.created_at is not None
        and created.params == SamplingParams(seed=3)
    )
    # The same policy version recorded by a second run is not duplicated.
    _run(audits, "r2", policy)
    with audits.db.engine.connect() as c:
        assert c.execute(text("select count(*) from policies")).scalar() == 1
    assert audits.mark_started("r1")
    assert audits.stalled_runs(3600) == [] and audits.stalled_runs(-1) == ["r1"]
    first = AuditItemResult(key="i1##0", item_id="i1", category="c", action=Action.ALLOW)
    again = first.model_copy(update={"action": Action.BLOCK})
    assert audits.add_result("r1", first, status=Status.SUCCEEDED, worker="w1") == 1
    assert audits.add_result("r1", again, status=Status.SUCCEEDED, worker="w2") == 0
    assert audits.count_results("r1") == 1
    assert audits.results("r1") == [first]
    assert audits.done_keys("r1") == {"i1##0"}
    assert audits.finish_run("r1", Status.SUCCEEDED, report={"verdict": "pass"})
    assert not audits.finish_run("r1", Status.FAILED)
    assert audits.get_run("r1").report == {"verdict": "pass"}  # type: ignore[union-attr]
    assert audits.get_run("missing") is None


def test_job_lease_claim_heartbeat_release_and_fail(db_url: str) -> None:
    store = job_store(db_url)
    _job(store, "j1")
    assert store.claim("j1", "w1", lease_s=60)
    claimed = store.get("j1")
    assert claimed is not None and claimed.worker == "w1" and claimed.heartbeat_at is not None
    # A duplicate delivery while w1's lease is live is refused: a job never runs twice at once.
    assert not store.claim("j1", "w2", lease_s=60)
    assert store.heartbeat(["j1"], "w1") == 1 and store.heartbeat(["j1"], "w2") == 0
    assert store.stale(60) == []
    # A lease shorter than the time since the heartbeat has lapsed: w1 is presumed dead.
    assert [j.id for j in store.stale(-1)] == ["j1"]
    assert store.claim("j1", "w2", lease_s=-1)
    again = store.get("j1")
    assert again is not None and again.worker == "w2" and again.attempts == 2
    assert store.release("j1", lease_s=-1)
    released = store.get("j1")
    assert released is not None and released.status == Status.QUEUED and released.worker is None
    assert not store.release("j1", lease_s=-1)  # only running jobs with a lapsed lease move
    assert store.claim("j1", "w3", lease_s=60)
    assert not store.fail_stale("j1", 60, JobError(code="worker-lost"))  # w3's lease is live
    assert store.fail_stale("j1", -1, JobError(code="worker-lost", detail="no heartbeat"))
    failed = store.get("j1")
    assert failed is not None and failed.status == Status.FAILED and failed.error is not None
    assert failed.error.code == "worker-lost" and failed.finished_at is not None
    # Recorded once: neither a late finish of the lost run nor a second sweep changes it.
    assert not store.finish("j1", Status.SUCCEEDED, result=_result("late"))
    assert not store.fail_stale("j1", -1, JobError(code="worker-lost"))
    _job(store, "j2")
    assert store.count_by_status() == {"failed": 1, "queued": 1}


def test_reads_scoped_to_a_tenant_never_return_another_tenants_rows(db_url: str) -> None:
    import datetime as dt

    from evaluators.contracts.drift import DriftReportRequest
    from store.drift import drift_store
    from store.keys import key_store

    jobs = job_store(db_url)
    mine = jobs.create(
        job_id="a1", model="m", queue="q", policy_name="p", policy_sha256="a" * 64,
        prompt_sha256="b" * 64, params=PARAMS, tenant="acme",
    )  # fmt: skip
    assert mine.tenant == "acme" and _job(jobs, "d1").tenant == "default"
    assert jobs.get("a1", tenant="acme").id == jobs.get("a1").id == "a1"  # type: ignore[union-attr]
    assert jobs.get("a1", tenant="globex") is None
    assert jobs.count_active("acme") == 1 and jobs.count_active("globex") == 0

    audits = audit_store(db_url)
    run = audits.create_run(
        run_id="r1", suite_name="s", suite_sha256="c" * 64, suite={"name": "s", "items": []}, model="m",
        queue="q", policy=PolicyIdentity(name="p", version="1", sha256="a" * 64), policy_text="name: p",
        params=PARAMS, samples_per_prompt=1, total=1, tenant="acme",
    )  # fmt: skip
    assert audits.get_run("r1", tenant="acme").id == run.id  # type: ignore[union-attr]
    assert audits.get_run("r1", tenant="globex") is None

    drift = drift_store(db_url)
    now = dt.datetime.now(dt.UTC)
    request = DriftReportRequest.model_validate(
        {"policy": "p", "window": {"from": (now - dt.timedelta(hours=1)).isoformat(), "to": now.isoformat()}}
    )
    drift.create_report("d-acme", request, "api", "acme")
    drift.create_report("d-default", request, "schedule")
    assert drift.report("d-acme", tenant="globex") is None and drift.report("d-acme", tenant="acme")
    assert [r.id for r in drift.reports(tenant="acme")] == ["d-acme"]
    assert {r.id for r in drift.reports()} == {"d-acme", "d-default"}

    keys = key_store(db_url)
    tenant = keys.save_tenant("acme", {"policies": ["p"], "max_active_jobs": 3})
    assert tenant.policies == ["p"] and tenant.rate_per_min is None and tenant.created_at.tzinfo
    assert keys.save_tenant("acme", {"policies": None}).policies is None
    key = keys.create_key(key_id="k" * 16, tenant="globex", role="app", secret_hash="scrypt$x")
    assert keys.tenant("globex") is not None  # created with its first key
    found = keys.key("k" * 16)
    assert found is not None and found[0].id == key.id and found[1].name == "globex"
    assert keys.revoke("k" * 16, tenant="acme") is None and keys.revoke("k" * 16) is not None
