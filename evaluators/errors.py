"""The one error hierarchy of Assay.

The service maps these to RFC 9457 problem details in one place
(``service/problems.py``); workers record them on failed jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class AssayError(Exception):
    """Base of every error Assay raises on purpose."""

    code = "assay-error"
    title = "Assay error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class ConfigError(AssayError):
    """Settings or environment are invalid."""

    code = "config-error"
    title = "Invalid configuration"


@dataclass(frozen=True)
class Location:
    """Where in a file a problem sits."""

    file: str
    line: int | None = None
    column: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        if self.field:
            where += f" (field {self.field})"
        return where


@dataclass
class Problem:
    """One problem found in a file."""

    location: Location
    message: str
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class FileValidationError(AssayError):
    """A YAML/JSON file (policy, suite) is broken; carries every problem found."""

    code = "invalid-file"
    title = "Invalid file"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    def as_dicts(self) -> list[dict[str, Any]]:
        return [
            {
                "file": p.location.file,
                "line": p.location.line,
                "column": p.location.column,
                "field": p.location.field,
                "message": p.message,
            }
            for p in self.problems
        ]


class PolicyError(FileValidationError):
    """A policy file is broken: bad YAML, unknown key or check, bad threshold, missing model."""

    code = "invalid-policy"
    title = "Invalid policy"


class PolicyNotFound(AssayError):
    code = "policy-not-found"
    title = "Policy not found"


class ModelMissingError(AssayError):
    """A model a policy or the generator needs is not on this machine."""

    code = "model-missing"
    title = "Model not available"


class CheckFailed(AssayError):
    """A check could not run on a batch; the policy's ``on_error`` decides what follows."""

    code = "check-failed"
    title = "Check could not run"


class InputError(AssayError):
    """A request is malformed or outside a policy's limits."""

    code = "invalid-input"
    title = "Invalid input"


class PayloadTooLarge(InputError):
    code = "payload-too-large"
    title = "Payload too large"


class LimitExceeded(InputError):
    """A generation parameter is outside the policy's limits."""

    code = "limit-exceeded"
    title = "Parameter outside policy limits"


class NotFound(AssayError):
    code = "not-found"
    title = "Not found"


class Conflict(AssayError):
    """The request clashes with what exists, e.g. a baseline name already taken."""

    code = "conflict"
    title = "Conflict"


class Overloaded(AssayError):
    """Inference did not finish in time or the queue is full."""

    code = "overloaded"
    title = "Service overloaded"


class TimedOut(AssayError):
    """The request's work did not finish within its time limit; retrying may succeed."""

    code = "timeout"
    title = "Request timed out"


class Unauthenticated(AssayError):
    """No API key, or one that is unknown, revoked or expired."""

    code = "unauthenticated"
    title = "Authentication required"


class Forbidden(AssayError):
    """The key's role may not use this route."""

    code = "forbidden"
    title = "Forbidden"


class RateLimited(AssayError):
    """The key sent more requests than its rate allows, or its tenant is over a quota."""

    code = "rate-limited"
    title = "Too many requests"


class NotReady(AssayError):
    code = "not-ready"
    title = "Not ready"


class Unavailable(AssayError):
    """A backing service (the database, the broker) does not answer; the caller should retry later."""

    code = "unavailable"
    title = "Service unavailable"
