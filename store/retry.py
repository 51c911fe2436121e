"""Retries of repository calls while the database does not answer, then a clean ``Unavailable``.

Every repository method is one short transaction, so running it again after
a connection error is safe: the failed attempt wrote nothing (no partial
writes), and the outcome-once guards (``finish``, unique result keys) make a
second write of the same outcome a no-op. Errors that retrying cannot fix
(a constraint, a bad query) are raised at once.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from evaluators.errors import Unavailable

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

FIRST_PAUSE_S = 0.1
LONGEST_PAUSE_S = 2.0


class Retrying(Protocol):
    """A repository: how long its calls retry an unreachable database."""

    retry_s: float


_CONNECTION_ERRORS = {"OperationalError", "InterfaceError"}


def transient(exc: BaseException) -> bool:
    """True for errors a later attempt may not meet: refused or dropped connections, locks, pool timeouts.

    The driver's error counts too, and so does one that another error was
    raised in handling: psycopg reports a connection dropped during the pool's
    pre-ping as a ProgrammingError raised while handling an OperationalError.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OperationalError | InterfaceError | PoolTimeout):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        names = {c.__name__ for c in type(current).__mro__}
        if not isinstance(current, DBAPIError) and _CONNECTION_ERRORS & names:
            return True  # the DB-API driver's own (sqlite3, psycopg)
        pending += [getattr(current, "orig", None), current.__cause__, current.__context__]
    return False


def unavailable(exc: BaseException, waited_s: float) -> Unavailable:
    cause = type(getattr(exc, "orig", None) or exc).__name__
    retry_after = max(1, math.ceil(max(waited_s, 1.0)))
    detail = f"the database did not answer ({cause}) for {waited_s:.1f} s; retry shortly"
    return Unavailable(detail, retry_after_s=retry_after)


def call_with_retries(fn: Callable[[], T], retry_s: float, what: str) -> T:
    """``fn()``, retried with backoff on transient database errors for up to ``retry_s`` seconds."""
    started = time.monotonic()
    pause = FIRST_PAUSE_S
    while True:
        try:
            return fn()
        except (DBAPIError, PoolTimeout) as exc:
            if not transient(exc):
                raise
            waited = time.monotonic() - started
            if waited + pause > retry_s:
                raise unavailable(exc, waited) from exc
            log.warning(
                "database unavailable in %s (%s); retrying in %.1f s",
                what,
                type(getattr(exc, "orig", None) or exc).__name__,
                pause,
            )
            time.sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE_S)


R = TypeVar("R", bound=Retrying)


def retried(method: Callable[Concatenate[R, P], T]) -> Callable[Concatenate[R, P], T]:
    """Decorate a repository method: transient database errors are retried for ``self.retry_s``."""

    @functools.wraps(method)
    def wrapper(self: R, *args: P.args, **kwargs: P.kwargs) -> T:
        return call_with_retries(lambda: method(self, *args, **kwargs), self.retry_s, method.__qualname__)

    return wrapper
