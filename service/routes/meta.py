"""Health, readiness and policy listing."""

from __future__ import annotations

import time
from typing import Any

from litestar import Response, get
from litestar.datastructures import State

from evaluators.models import registry
from service.auth import PUBLIC, Principal, requires
from service.problems import problem
from service.state import AppState


@get("/healthz", tags=["meta"], summary="Liveness: the process answers", opt=PUBLIC)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", tags=["meta"], summary="Readiness: policies valid and models loaded", opt=PUBLIC)
async def readyz(state: State) -> Response[dict[str, Any]]:
    app: AppState | None = getattr(state, "assay", None)
    if app is None or not app.ready:
        return problem(503, "Not ready", "models are still loading", "not-ready", "/readyz")
    body = {
        "status": "ready",
        "policies": app.policies.names(),
        "models": registry().loaded_keys(),
        "uptime_s": round(time.time() - app.started_at, 1),
    }
    return Response(body, status_code=200)


@get("/v1/policies", tags=["policies"], summary="List policies", opt=requires("any"))
async def list_policies(state: State, principal: Principal) -> dict[str, Any]:
    app: AppState = state.assay
    # A tenant sees only the policies it may use.
    return {
        "policies": [
            {
                **lp.identity(),
                "description": lp.policy.description,
                "input": app.engines[lp.name].checks("input"),
                "output": app.engines[lp.name].checks("output"),
            }
            for lp in app.policies
            if principal.sees_policy(lp.name)
        ]
    }


@get("/v1/policies/{name:str}", tags=["policies"], summary="Show one policy", opt=requires("any"))
async def get_policy(name: str, state: State, principal: Principal) -> dict[str, Any]:
    app: AppState = state.assay
    lp = app.policy(name, principal)
    return {**lp.identity(), "policy": lp.policy.model_dump(mode="json")}
