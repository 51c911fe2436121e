"""The one place errors become RFC 9457 problem details."""

from __future__ import annotations

import logging
import math
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from evaluators import errors as E

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://assay.dev/problems/"

# Error class -> HTTP status. Order matters: subclasses before their bases.
STATUS: list[tuple[type[E.AssayError], int]] = [
    (E.PayloadTooLarge, 413),
    (E.LimitExceeded, 422),
    (E.InputError, 400),
    (E.PolicyNotFound, 404),
    (E.NotFound, 404),
    (E.Conflict, 409),
    (E.PolicyError, 422),
    (E.FileValidationError, 422),
    (E.Unauthenticated, 401),
    (E.Forbidden, 403),
    (E.RateLimited, 429),
    (E.TimedOut, 504),
    (E.Overloaded, 503),
    (E.NotReady, 503),
    (E.Unavailable, 503),
    (E.ModelMissingError, 503),
    (E.CheckFailed, 502),
    (E.ConfigError, 500),
]


def status_for(exc: E.AssayError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return HTTP_500_INTERNAL_SERVER_ERROR


# Seconds a client is told to wait (Retry-After) on a 503 that names no better figure.
DEFAULT_RETRY_AFTER_S = 1


def problem(
    status: int,
    title: str,
    detail: str,
    code: str,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None})
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def retry_after(status: int, extra: dict[str, Any]) -> dict[str, str] | None:
    """The Retry-After header of a 429 or 503 (and ``extra["retry_after_s"]`` set to match), else None.

    Overload and outages are temporary: say when to come back (RFC 9110, seconds).
    """
    if status not in (429, 503):
        return None
    seconds = max(1, math.ceil(float(extra.get("retry_after_s") or DEFAULT_RETRY_AFTER_S)))
    extra["retry_after_s"] = seconds
    return {"Retry-After": str(seconds)}


# The challenge a 401 carries (RFC 9110 11.6.1): a bearer token; X-API-Key is accepted too.
WWW_AUTHENTICATE = 'Bearer realm="assay"'


def error_headers(status: int, extra: dict[str, Any]) -> dict[str, str] | None:
    """Retry-After on 429 and 503 (see ``retry_after``), WWW-Authenticate on 401."""
    if status == 401:
        return {"WWW-Authenticate": WWW_AUTHENTICATE}
    return retry_after(status, extra)


def assay_error_handler(request: Request[Any, Any, Any], exc: E.AssayError) -> Response[dict[str, Any]]:
    status = status_for(exc)
    extra: dict[str, Any] = dict(exc.extra)
    if isinstance(exc, E.FileValidationError):
        extra["errors"] = exc.as_dicts()
    headers = error_headers(status, extra)
    return problem(status, exc.title, exc.detail, exc.code, request.url.path, headers, **extra)


def http_error_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    code = {
        400: "malformed-request",
        404: "not-found",
        405: "method-not-allowed",
        413: "payload-too-large",
    }.get(status, "http-error")
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list | dict):
        extra["errors"] = exc.extra
    title = {400: "Malformed request", 413: "Payload too large"}.get(status, "HTTP error")
    # Keep the exception's headers: a 405 must say which methods the path has (Allow, RFC 9110).
    headers = dict(exc.headers) if exc.headers else None
    return problem(status, title, str(exc.detail), code, request.url.path, headers, **extra)


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    # Log the type and where, never the request body: it may hold personal data.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "Internal error", f"{type(exc).__name__}", "internal-error", request.url.path)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    E.AssayError: assay_error_handler,
    HTTPException: http_error_handler,
    Exception: internal_error_handler,
}

__all__ = ["EXCEPTION_HANDLERS", "PROBLEM_JSON", "MediaType", "problem", "status_for"]
