"""The OpenAPI document, completed in one place so generated clients and fuzzers can trust it.

Litestar documents what handlers declare; this adds what the framework
cannot see, once, after the routes are built:

* every error status the app answers with, on every operation, as RFC 9457
  problem details (``application/problem+json``), or OpenAI's error shape on
  the OpenAI routes. The statuses come from ``service.problems.STATUS`` (the
  table errors map through) plus those Litestar raises itself, so a new
  error class there is documented without touching this file;
* ``additionalProperties: false`` on request bodies whose model forbids extra
  keys (``extra="forbid"``), as the server rejects them;
* what a model states in its ``json_schema_extra`` (e.g. "exactly one of
  prompt or messages"), which Litestar's schema generation ignores;
* extra success responses and content types a handler returns besides its
  declared one (``EXTRA_RESPONSES``).
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin  # the one that builds and caches the document
from litestar.routes import HTTPRoute
from pydantic import BaseModel

from evaluators.audit.suites import Suite
from evaluators.contracts import SamplingParams
from evaluators.policy import LoadedPolicy, Range
from service.problems import PROBLEM_JSON, STATUS

# Statuses Litestar raises before a handler runs: a body that does not validate,
# an unknown path, a method the path lacks, a body over the size limit.
FRAMEWORK_STATUSES = {400, 404, 405, 413}

TITLES = {
    400: "Malformed request: bad JSON, a field of the wrong type or shape, a value out of range",
    401: "No valid API key",
    403: "The key's role or tenant may not do this",
    404: "Unknown policy, job, audit, report or path",
    405: "Method not allowed on this path (the Allow header lists those that are)",
    409: "The resource is already finished",
    413: "Text or body too large",
    422: "Valid request, refused by the policy's limits or a broken policy",
    429: "Rate limited; Retry-After says when to come back",
    500: "Internal error (a bug; the body names the exception type only)",
    502: "A check could not run",
    503: "Overloaded, not ready or a dependency unavailable; Retry-After says when to come back",
    504: "Timed out",
}


# Response headers by status (RFC 9110): when to retry, how to authenticate.
def _header(description: str, kind: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": kind}, "required": True}


HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": _header("The auth scheme.", "string")},
    405: {"Allow": _header("The methods the path has.", "string")},
    429: {"Retry-After": _header("Seconds to wait.", "integer")},
    503: {"Retry-After": _header("Seconds to wait.", "integer")},
}

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; extra members (errors, limit, retry_after_s...) may follow.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "URI naming the problem type."},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string", "description": "The request path."},
        "errors": {"type": "array", "description": "Each invalid field or file location."},
    },
}

OPENAI_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "OpenAI's error shape.",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


@dataclass(frozen=True)
class Extra:
    """A success response a handler returns besides its declared one."""

    status: int
    description: str
    content_types: tuple[str, ...] = ("application/json",)


_ANY_OBJECT = {"type": "object", "additionalProperties": {}}
_TEXT = {"type": "string"}
_JSON, _HTML, _XML, _SSE = "application/json", "text/html", "application/xml", "text/event-stream"

# (method, path) -> responses the handler returns besides its declared status.
EXTRA_RESPONSES: dict[tuple[str, str], list[Extra]] = {
    ("post", "/v1/generations"): [Extra(200, "The finished job, when it finished within ?wait")],
    ("get", "/v1/audits/{run_id}/report"): [
        Extra(200, "The report: JSON, HTML or JUnit XML", (_JSON, _HTML, _XML))
    ],
    ("get", "/v1/drift/reports/{report_id}"): [Extra(200, "The report as JSON, or as HTML", (_JSON, _HTML))],
    ("post", "/v1/chat/completions"): [Extra(200, "The completion, or its server-sent events", (_SSE,))],
    ("post", "/v1/completions"): [Extra(200, "The completion, or its server-sent events", (_SSE,))],
}


def documented_errors() -> dict[int, str]:
    """Every error status the app can answer with, and what it means."""
    statuses = FRAMEWORK_STATUSES | {status for _, status in STATUS} | {409}
    return {s: TITLES.get(s, "Error") for s in sorted(statuses)}


REF = "#/components/schemas/"
# Operations with this tag answer errors in OpenAI's shape (service/openai/errors.py).
OPENAI_TAG = "openai"


def complete_openapi(app: Litestar) -> dict[str, Any]:
    """Complete the app's served OpenAPI document in place (it is built once and cached)."""
    allow_every_method(app)
    doc = _document(app)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    schemas["OpenAIError"] = OPENAI_ERROR_SCHEMA
    for model in _request_models(app):
        _from_pydantic(schemas, model)
    _inline_suites(schemas)
    errors = documented_errors()
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            _document_errors(op["responses"], errors, OPENAI_TAG in op.get("tags", ()))
            for extra in EXTRA_RESPONSES.get((method, path), []):
                _add_success(op["responses"], extra)
    return doc


def document_policies(app: Litestar, policies: Iterable[LoadedPolicy], default: str = "default") -> None:
    """State each served policy's generation limits in the request schemas (else a 422, or a 400).

    Called at startup, once the policies are loaded: a request naming policy P
    (``"policy": P``, or ``model: "smollm2@P"`` on the OpenAI routes) must keep its
    sampling parameters within P's limits and the sampling parameters' own bounds.
    """
    schemas = _document(app).setdefault("components", {}).setdefault("schemas", {})
    served = [(lp.name, _bounds(lp)) for lp in policies]
    for component in ("GenerationRequest", "AuditRequest"):
        if component in schemas:
            schemas[component]["allOf"] = [
                {"if": _names(name, default), "then": {"properties": {"params": {"properties": bounds}}}}
                for name, bounds in served
            ]
    for component in ("ChatRequest", "CompletionRequest"):
        if component in schemas:
            schemas[component]["allOf"] = [
                {"if": _aliases(name, default), "then": {"properties": _openai_bounds(bounds)}}
                for name, bounds in served
            ]


def _bounds(lp: LoadedPolicy) -> dict[str, dict[str, Any]]:
    """JSON Schema bounds of each sampling parameter under ``lp``: its limits and the field's own."""
    limits = lp.policy.generation.limits
    out: dict[str, dict[str, Any]] = {}
    for name in ("temperature", "top_k", "top_p", "max_new_tokens", "repetition_penalty"):
        low, high, strict_low = _field_bounds(SamplingParams, name)
        rng: Range = getattr(limits, name)
        if rng.min is not None and (low is None or rng.min >= low):
            low, strict_low = rng.min, False
        if rng.max is not None and (high is None or rng.max < high):
            high = rng.max
        bound: dict[str, Any] = {}
        if low is not None:
            bound["exclusiveMinimum" if strict_low else "minimum"] = low
        if high is not None:
            bound["maximum"] = high
        out[name] = bound
    most = limits.max_stop_sequences
    out["stop"] = (
        {"maxItems": most} if most else {"oneOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]}
    )
    return out


def _field_bounds(model: type[BaseModel], name: str) -> tuple[float | None, float | None, bool]:
    """(low, high, low is exclusive) from a pydantic field's ge/gt/le constraints."""
    low = high = None
    strict = False
    for meta in model.model_fields[name].metadata:
        if getattr(meta, "ge", None) is not None:
            low = meta.ge
        if getattr(meta, "gt", None) is not None:
            low, strict = meta.gt, True
        if getattr(meta, "le", None) is not None:
            high = meta.le
    return low, high, strict


def _openai_bounds(bounds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    tokens = bounds["max_new_tokens"]
    stop = bounds["stop"]
    most = stop.get("maxItems")
    return {
        "temperature": bounds["temperature"],
        "top_p": bounds["top_p"],
        "max_tokens": tokens,
        "max_completion_tokens": tokens,
        # A single stop string is one sequence.
        "stop": {"maxItems": most} if most else {"type": "null"},
    }


def _names(name: str, default: str) -> dict[str, Any]:
    named = {"required": ["policy"], "properties": {"policy": {"const": name}}}
    return {"anyOf": [named, {"not": {"required": ["policy"]}}]} if name == default else named


def _aliases(name: str, default: str) -> dict[str, Any]:
    # The policy is what follows the model's first "@" (mapping.split_model).
    aliased = {"required": ["model"], "properties": {"model": {"pattern": f"^[^@]*@{re.escape(name)}$"}}}
    plain = {"required": ["model"], "properties": {"model": {"pattern": "^[^@]*$"}}}
    return {"anyOf": [aliased, plain]} if name == default else aliased


def _document(app: Litestar) -> dict[str, Any]:
    return app.plugins.get(OpenAPIPlugin).provide_openapi_schema()


def allow_every_method(app: Litestar) -> None:
    """OPTIONS answers list every method of the path, not only those of its first handlers.

    Litestar merges handlers registered on one path separately (GET and DELETE
    /v1/jobs/{id}) into a new route but keeps the first route's OPTIONS handler,
    whose Allow header reads that first route's methods ("DELETE, OPTIONS").
    Point the stale route the handler closes over at the merged methods.
    """
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if "OPTIONS" not in handler.http_methods:
                continue
            for cell in getattr(handler.fn, "__closure__", None) or ():
                stale = cell.cell_contents
                if isinstance(stale, HTTPRoute) and stale is not route:
                    stale.methods = set(route.methods)


def _document_errors(responses: dict[str, Any], errors: dict[int, str], openai: bool) -> None:
    problem = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    openai_error = {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}}
    for status, title in errors.items():
        # A 405 comes from routing, before the OpenAI routes' own error handlers.
        content = openai_error if openai and status != 405 else problem
        # Replaces Litestar's own 400 (its ValidationException shape, not what the app sends).
        response: dict[str, Any] = {"description": title, "content": content}
        if status in HEADERS:
            response["headers"] = HEADERS[status]
        responses[str(status)] = response


def _add_success(responses: dict[str, Any], extra: Extra) -> None:
    response = responses.setdefault(str(extra.status), {"description": extra.description, "content": {}})
    content = response.setdefault("content", {})
    for media in extra.content_types:
        content.setdefault(media, {"schema": _ANY_OBJECT if media == _JSON else _TEXT})


def _from_pydantic(schemas: dict[str, Any], model: type[BaseModel]) -> None:
    """The request model's schema as pydantic, which validates it, states it.

    Litestar's own rendering drops ``pattern``, writes minLength for tuples and
    loses ``gt``, and never sees model-level rules (extra="forbid", the rules of
    ``evaluators.contracts.schema.schema_extra``); pydantic's says what it accepts.
    """
    name = model.__name__
    if name not in schemas:
        return
    schema = model.model_json_schema(ref_template=REF + "{model}", mode="validation")
    for def_name, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(def_name, definition)
    schemas[name] = schema


def _inline_suites(schemas: dict[str, Any]) -> None:
    """``POST /v1/audits`` takes a shipped suite's name or a whole suite (``load_suite``)."""
    audit = schemas.get("AuditRequest")
    if audit is None:
        return
    suite = Suite.model_json_schema(ref_template=REF + "{model}", mode="validation")
    for def_name, definition in suite.pop("$defs", {}).items():
        schemas.setdefault(def_name, definition)
    schemas.setdefault("Suite", suite)
    audit["properties"]["suite"] = {
        "description": audit["properties"]["suite"].get("description", ""),
        # A name, never a path.
        "oneOf": [{"type": "string", "not": {"pattern": r"^\.|/"}}, {"$ref": REF + "Suite"}],
    }


def _request_models(app: Litestar) -> list[type[BaseModel]]:
    """Every pydantic model reachable from a handler's request body."""
    seen: dict[type[BaseModel], None] = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            data = handler.parsed_fn_signature.parameters.get("data")
            if data is not None:
                for model in _models_in(data.annotation):
                    _walk(model, seen)
    return list(seen)


def _walk(model: type[BaseModel], seen: dict[type[BaseModel], None]) -> None:
    if model in seen:
        return
    seen[model] = None
    for field in model.model_fields.values():
        for inner in _models_in(field.annotation):
            _walk(inner, seen)


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            yield from _models_in(arg)
