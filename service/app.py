"""The Litestar application: policies and models load once, at startup."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, Reference, SecurityScheme

from evaluators.runtime import configure_process
from service.auth import authorize, current_principal
from service.backpressure import request_timeout
from service.observability import MetricsController, install_metrics, prometheus_config, request_context
from service.openai.routes import OpenAIController
from service.openapi import complete_openapi, document_policies
from service.problems import EXCEPTION_HANDLERS
from service.routes.audits import AuditController
from service.routes.drift import DriftController
from service.routes.generation import GenerationController
from service.routes.keys import KeyController
from service.routes.meta import get_policy, healthz, list_policies, readyz
from service.routes.moderation import ModerationController
from service.settings import ServiceSettings, service_settings
from service.state import AppState
from service.tracing import traced_requests
from service.validation import ModelStrictness
from workers.tracing import install_tracing

log = logging.getLogger(__name__)


def log_auth_mode(settings: ServiceSettings) -> None:
    if settings.auth == "off":
        log.warning(
            "authentication is OFF (ASSAY_AUTH=off): every caller acts as an admin of tenant 'default', "
            "with no rate limits. Set ASSAY_AUTH=required before exposing this port."
        )
    else:
        log.info(
            "authentication is required (ASSAY_AUTH=required): API keys on every route but health, "
            "readiness, metrics and docs"
        )


def security_schema(settings: ServiceSettings) -> tuple[Components, list[dict[str, list[str]]] | None]:
    """The OpenAPI security schemes, declared only when keys are required (else they would be a lie)."""
    if settings.auth == "off":
        return Components(), None
    schemes: dict[str, SecurityScheme | Reference] = {
        "bearer": SecurityScheme(type="http", scheme="bearer", description="An Assay API key."),
        "apiKey": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header"),
    }
    return Components(security_schemes=schemes), [{"bearer": []}, {"apiKey": []}]


def create_app(settings: ServiceSettings | None = None) -> Litestar:
    """Build the app; a broken policy or a missing model raises at startup."""
    # Before the lifespan loads any model (uvicorn may call this factory without the CLI).
    configure_process()
    settings = settings or service_settings()
    # Traces when an OTLP endpoint is set; the extra missing with one set stops startup here.
    install_tracing("assay-api")
    components, security = security_schema(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # Model loading is blocking work: keep it off the event loop.
        state = await asyncio.to_thread(AppState.create, settings)
        app.state.assay = state
        document_policies(app, state.policies)
        install_metrics(state.worker_settings, settings.store_wait_s, drift=lambda: state.drift)
        log_auth_mode(settings)
        state.start_embedded_worker()
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            await state.close()

    app = Litestar(
        route_handlers=[
            healthz,
            readyz,
            list_policies,
            get_policy,
            ModerationController,
            GenerationController,
            AuditController,
            DriftController,
            OpenAIController,
            KeyController,
            MetricsController,
        ],
        lifespan=[lifespan],
        # Every route declares who may call it (service/auth.py); one guard checks it.
        guards=[authorize],
        dependencies={"principal": Provide(current_principal, sync_to_thread=False)},
        middleware=[prometheus_config().middleware, request_timeout(settings.request_timeout_s)],
        exception_handlers=EXCEPTION_HANDLERS,
        # Request bodies validated with each field's own strictness (Field(strict=True) holds).
        plugins=[ModelStrictness()],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Assay",
            version="0.1.0",
            description="Evaluation and guardrails for LLM inputs and outputs.",
            path="/docs",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
            components=components,
            security=security,
        ),
        debug=False,
        # Logging is set up once per process by its entry point (JSON lines, request ids:
        # evaluators/logs.py), not replaced by Litestar's own configuration.
        logging_config=None,
    )
    # Error statuses, strict request bodies and extra content types, documented in one place.
    complete_openapi(app)
    # Outermost, so every response (404 and 405 included) carries X-Request-ID; the request's span
    # inside it records that id.
    app.asgi_handler = request_context(traced_requests(app.asgi_handler))
    return app
