"""Engines, sessions and migrations: one ``Database`` (connection pool) per URL per process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_migrate_lock = threading.Lock()


class Database:
    """An engine at the newest schema; every ``session()`` is one short transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        connect_args: dict[str, Any] = {}
        sqlite = url.startswith("sqlite")
        sqlite_path = make_url(url).database if sqlite else None
        if sqlite_path and sqlite_path != ":memory:":
            Path(sqlite_path).parent.mkdir(parents=True, exist_ok=True)
        if sqlite:
            # API and worker are separate processes: wait for locks instead of failing.
            connect_args = {"timeout": 30, "check_same_thread": False}
        self.engine: Engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            migrate(self.engine)
        except Exception:
            self.engine.dispose()
            raise

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    def dispose(self) -> None:
        self.engine.dispose()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _migrate_lock:
        for attempt in range(3):
            try:
                with engine.begin() as connection:
                    cfg.attributes["connection"] = connection
                    command.upgrade(cfg, "head")
                return
            except Exception:
                # Another process (API or worker) may be migrating the same database.
                if attempt == 2:
                    raise
                time.sleep(0.5 * (attempt + 1))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def insert_ignore(session: Session, table: Any, values: dict[str, Any]) -> bool:
    """INSERT that does nothing on a unique conflict; True when a row was written."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(table).values(**values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table).values(**values).on_conflict_do_nothing()
    else:  # pragma: no cover - other databases are not supported targets
        raise RuntimeError(f"unsupported database {dialect}")
    # rowcount is -1 for this statement under psycopg 3; RETURNING says it for certain.
    stmt = stmt.returning(*table.primary_key.columns)
    return session.execute(stmt).first() is not None


# Opening a Database migrates and builds a pool, so each process keeps one per URL.
_databases: dict[str, Database] = {}
_lock = threading.Lock()


def database(url: str, *, retry_s: float = 0.0) -> Database:
    """The process's ``Database`` for ``url``, opened (and migrated) on first use.

    A database that does not answer is retried for ``retry_s`` seconds, then
    ``evaluators.errors.Unavailable`` is raised (and nothing is cached).
    """
    from store.retry import call_with_retries

    with _lock:
        if url not in _databases:
            _databases[url] = call_with_retries(lambda: Database(url), retry_s, "opening the database")
        return _databases[url]


def reset_stores() -> None:
    """Dispose every cached engine and forget it; the next ``database(url)`` opens afresh."""
    with _lock:
        for db in _databases.values():
            db.dispose()
        _databases.clear()
