"""One OpenTelemetry span per HTTP request, when traces are on (``workers/tracing.py``).

A server span named by method and route template (``POST /v1/generations``),
with the status code, the request id and, once the guard has run, the
caller's tenant and key id. A ``traceparent`` the caller sends is continued.
Never the path's values, the query string, a header's value or the body.
"""

from __future__ import annotations

from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from evaluators.logs import request_id
from workers import tracing

_TRACE_HEADERS = tuple(h.encode() for h in tracing.TRACE_HEADERS)


def traced_requests(app: ASGIApp) -> ASGIApp:
    """Wrap the app (inside ``request_context``, whose request id it records) in a span per request."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        # Checked per request, not at start-up: tests turn traces on and off in one process.
        if scope["type"] != "http" or not tracing.enabled():
            await app(scope, receive, send)
            return
        carrier = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope.get("headers") or []
            if k in _TRACE_HEADERS
        }
        method = str(scope.get("method") or "")
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with tracing.span(method, {"http.request.method": method}, kind="server", carrier=carrier) as current:
            try:
                await app(scope, receive, send_status)
            finally:
                # Routing happens inside the app: the template is known only now.
                route = scope.get("path_template")
                attributes: dict[str, Any] = {"http.response.status_code": status}
                if route and current is not None:
                    current.update_name(f"{method} {route}")
                    attributes["http.route"] = route
                rid = request_id.get()
                if rid:
                    attributes["assay.request_id"] = rid
                # Who asked (service/auth.py leaves the caller on the connection): a key id, never a key.
                caller: Any = (scope.get("state") or {}).get("principal")
                if caller is not None:
                    attributes["assay.tenant"] = caller.tenant
                    if caller.key_id:
                        attributes["assay.key_id"] = caller.key_id
                tracing.set_attributes(current, attributes)
                if status >= 500:
                    tracing.fail(current, str(status))

    return middleware
