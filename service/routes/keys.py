"""API keys of the caller's tenant, for its admins: create, list, revoke.

Tenants themselves (their policies and quotas) are the operator's, through
``assay tenants``; an admin key manages keys of its own tenant only, and
another tenant's key is not found.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from litestar import Controller, Response, get, post
from litestar.datastructures import State
from pydantic import BaseModel, ConfigDict, Field

from evaluators.errors import NotFound
from service.auth import Principal, Role, issue_key, requires
from service.state import AppState
from store.records import ApiKeyRecord


class KeyRequest(BaseModel):
    """``POST /v1/keys``: a new key for the caller's tenant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role = Field(description="app (moderate, generate), auditor (audits, drift) or admin (everything).")
    name: str | None = Field(default=None, max_length=128, description="A label, e.g. the app that uses it.")
    # Strict: the schema says number, so a JSON true is refused rather than read as 1 day.
    expires_in_days: float | None = Field(
        default=None,
        gt=0,
        le=3650,
        strict=True,
        description="The key stops working after this many days; default never.",
    )


def key_body(key: ApiKeyRecord) -> dict[str, Any]:
    """A key as lists show it: never its secret nor its hash."""

    def iso(value: dt.datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": key.id,
        "tenant": key.tenant,
        "role": key.role,
        "name": key.name,
        "created_at": iso(key.created_at),
        "expires_at": iso(key.expires_at),
        "revoked_at": iso(key.revoked_at),
        "last_used_at": iso(key.last_used_at),
    }


class KeyController(Controller):
    path = "/v1/keys"
    tags = ["keys"]
    opt = requires("admin")

    @post("/", status_code=201, summary="Create an API key for this tenant; the key is shown only here")
    async def create(self, data: KeyRequest, state: State, principal: Principal) -> Response[dict[str, Any]]:
        app: AppState = state.assay
        expires = None
        if data.expires_in_days is not None:
            expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=data.expires_in_days)
        record, token = await asyncio.to_thread(
            issue_key, app.keys(), principal.tenant, data.role, data.name, expires
        )
        return Response(
            {**key_body(record), "key": token}, status_code=201, headers={"Location": f"/v1/keys/{record.id}"}
        )

    @get("/", summary="This tenant's API keys (without their secrets)")
    async def list_keys(self, state: State, principal: Principal) -> dict[str, Any]:
        app: AppState = state.assay
        keys = await asyncio.to_thread(app.keys().keys, principal.tenant)
        return {"keys": [key_body(k) for k in keys]}

    @post("/{key_id:str}/revoke", status_code=200, summary="Revoke an API key of this tenant")
    async def revoke(self, key_id: str, state: State, principal: Principal) -> dict[str, Any]:
        app: AppState = state.assay
        record = await asyncio.to_thread(app.keys().revoke, key_id, principal.tenant)
        if record is None:
            raise NotFound(f"no API key {key_id!r}")
        app.auth.forget(key_id)
        return key_body(record)
