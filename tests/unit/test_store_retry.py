"""Repository calls retry a database that does not answer, then raise Unavailable (a 503 at the API)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from devstack.redis import free_port
from evaluators.errors import Unavailable
from store.db import _databases, database, reset_stores
from store.retry import call_with_retries, transient


class Flaky:
    """Fails with ``error`` the first ``failures`` calls, then answers; a call after that raises."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls > self.failures + 1:
            raise AssertionError("called again after it succeeded")
        if self.calls <= self.failures:
            raise self.error
        return "ok"


REFUSED = OperationalError("connect", {}, ConnectionRefusedError("refused"))


def test_transient_errors_are_retried_until_they_pass() -> None:
    flaky = Flaky(3, REFUSED)
    assert call_with_retries(flaky, retry_s=5, what="test") == "ok"
    assert flaky.calls == 4


def test_errors_a_retry_cannot_fix_are_raised_at_once() -> None:
    duplicate = IntegrityError("insert", {}, Exception("unique"))
    assert not transient(duplicate) and transient(REFUSED)
    flaky = Flaky(1, duplicate)
    with pytest.raises(IntegrityError):
        call_with_retries(flaky, retry_s=5, what="test")
    assert flaky.calls == 1


def test_a_connection_dropped_during_the_pool_ping_counts_as_transient() -> None:
    # psycopg: restoring autocommit after a failed ping raises ProgrammingError while handling the drop.
    driver_error = sqlite3.ProgrammingError("can't change 'autocommit' now")
    driver_error.__context__ = sqlite3.OperationalError("connection socket closed")
    assert transient(ProgrammingError("ping", {}, driver_error))
    assert not transient(ProgrammingError("select", {}, sqlite3.ProgrammingError("syntax error")))


def test_a_database_that_stays_down_is_unavailable_with_a_retry_after() -> None:
    flaky = Flaky(100, REFUSED)
    with pytest.raises(Unavailable) as info:
        call_with_retries(flaky, retry_s=0.5, what="test")
    assert 1 < flaky.calls < 10
    assert info.value.extra["retry_after_s"] >= 1 and "OperationalError" not in info.value.detail


def test_opening_an_unreachable_postgresql_is_unavailable_and_not_cached(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(Unavailable):
        database(url, retry_s=0.3)
    assert url not in _databases
    assert database(f"sqlite:///{tmp_path}/ok.db", retry_s=0.3).url.endswith("ok.db")
    reset_stores()
