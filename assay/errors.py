"""The client's exceptions: a problem-details answer becomes a typed error, by status."""

from __future__ import annotations

from typing import Any

import httpx

PROBLEM_BASE = "https://assay.dev/problems/"


class AssayClientError(Exception):
    """Base of every error the client raises."""


class AssayConnectionError(AssayClientError):
    """The server could not be reached, or did not answer in time (after the retries)."""


class AssayAPIError(AssayClientError):
    """The server answered with an error (RFC 9457 problem details)."""

    status: int = 0

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.type = str(problem.get("type") or "about:blank")
        self.title = str(problem.get("title") or httpx.codes.get_reason_phrase(status) or "Error")
        self.detail = str(problem.get("detail") or "")
        self.instance = problem.get("instance")
        super().__init__(f"{status} {self.title}: {self.detail}" if self.detail else f"{status} {self.title}")

    @property
    def code(self) -> str:
        """The problem's code, e.g. ``policy-not-found`` (the last part of its ``type``)."""
        return self.type.removeprefix(PROBLEM_BASE)

    @property
    def extra(self) -> dict[str, Any]:
        """Members beyond the standard five (``errors``, ``limit``, ``job_id``...)."""
        standard = {"type", "title", "status", "detail", "instance"}
        return {k: v for k, v in self.problem.items() if k not in standard}


class BadRequest(AssayAPIError):
    status = 400


class Unauthorized(AssayAPIError):
    """401: no API key, or one that is unknown, revoked or expired."""

    status = 401


class Forbidden(AssayAPIError):
    """403: the key's role may not use this route."""

    status = 403


class NotFound(AssayAPIError):
    status = 404


class Conflict(AssayAPIError):
    status = 409


class PayloadTooLarge(AssayAPIError):
    status = 413


class Unprocessable(AssayAPIError):
    """422: e.g. generation parameters outside the policy's limits."""

    status = 422


class RateLimited(AssayAPIError):
    status = 429


class ServiceUnavailable(AssayAPIError):
    """503: overloaded, not ready, or a model is missing."""

    status = 503


class ServerError(AssayAPIError):
    status = 500


class GatewayTimeout(ServerError):
    """504: the request did not finish in the server's time limit; it was cancelled."""

    status = 504


_BY_STATUS: dict[int, type[AssayAPIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: Unprocessable,
    429: RateLimited,
    503: ServiceUnavailable,
    504: GatewayTimeout,
}


def error_for(response: httpx.Response) -> AssayAPIError:
    """The typed error of an answer with status >= 400 (problem details, or whatever came)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"title": response.reason_phrase, "detail": response.text[:500]}
    cls = _BY_STATUS.get(response.status_code)
    if cls is None:
        cls = ServerError if response.status_code >= 500 else AssayAPIError
    return cls(response.status_code, body)
