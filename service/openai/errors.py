"""OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``, for the OpenAI routes only.

The controller installs these handlers, so its routes answer the way OpenAI
clients parse; every other route keeps RFC 9457 problem details
(``service/problems.py``), and both take their status codes from one table.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from evaluators import errors as E
from service.openai.schema import ErrorBody, ErrorResponse
from service.problems import error_headers, status_for

log = logging.getLogger(__name__)


def error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response[dict[str, Any]]:
    body = ErrorResponse(error=ErrorBody(message=message, type=error_type(status), param=param, code=code))
    return Response(body.model_dump(), status_code=status, headers=headers)


def assay_error(request: Request[Any, Any, Any], exc: E.AssayError) -> Response[dict[str, Any]]:
    status = status_for(exc)
    # OpenAI answers a bad parameter with 400, whatever the reason it is bad.
    if isinstance(exc, E.LimitExceeded):
        status = 400
    param = exc.extra.get("param") or exc.extra.get("field")
    code = exc.extra.get("code") or exc.code
    headers = error_headers(status, dict(exc.extra))
    return openai_error(
        status, exc.detail, param=str(param) if param else None, code=str(code), headers=headers
    )


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    param = None
    message = str(exc.detail)
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list) and exc.extra:
        first = exc.extra[0]
        if isinstance(first, dict):
            param = str(first.get("key") or "") or None
            message = f"{message}: {first.get('message', '')}".rstrip(": ")
    code = "invalid_value" if exc.status_code == 400 else None
    headers = dict(exc.headers) if exc.headers else None  # Allow on a 405
    return openai_error(exc.status_code, message, param=param, code=code, headers=headers)


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    # The type and where, never the request body: it may hold personal data.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return openai_error(500, f"internal error: {type(exc).__name__}", code="internal_error")


OPENAI_EXCEPTION_HANDLERS: dict[Any, Any] = {
    E.AssayError: assay_error,
    HTTPException: http_error,
    Exception: internal_error,
}
