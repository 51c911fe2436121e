"""API keys, tenants and roles: who is calling, and may they use this route.

- A key reads ``assay_<id>_<secret>``: 16 hex characters that find its row,
  then 64 hex characters (256 random bits) checked against the row's salted
  scrypt hash. The secret is shown once, at creation, and never stored.
- Keys are sent as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.
- Every route declares who may call it in its ``opt``: ``requires("app")``,
  ``requires("auditor")``, ``requires("admin")``, ``requires("any")`` (any
  key), or ``PUBLIC``. ``authorize``, the app's one guard, checks it; a route
  that declares nothing is for admins only (fail closed). Litestar's own
  routes (the OpenAPI docs, automatic OPTIONS) are public.
- The guard leaves the caller's ``Principal`` (tenant, role, allowed
  policies, quotas) on the connection; handlers take it as the ``principal``
  dependency and scope every read and write to its tenant.
- With ``ASSAY_AUTH=off`` every caller is an admin of the default tenant with
  no rate limit: the local ``make run``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from pydantic import BaseModel, ConfigDict, Field

from evaluators.contracts import DEFAULT_TENANT
from evaluators.errors import Forbidden, NotReady, PolicyNotFound, RateLimited, Unauthenticated
from service.ratelimit import Limit, retry_after_s
from store.keys import KeyStore
from store.records import ApiKeyRecord, TenantRecord

if TYPE_CHECKING:
    from service.settings import ServiceSettings
    from service.state import AppState

Role = Literal["app", "auditor", "admin"]
ROLES: tuple[Role, ...] = ("app", "auditor", "admin")
RouteRole = Role | Literal["any"]

KEY_CHECKS = Limit(rate_per_min=120, burst=30)
"""Keys checked against the store per client address (a key is checked once per auth_cache_s)."""

PUBLIC: dict[str, Any] = {"public": True}
"""The ``opt`` of routes anyone may call: health, readiness, metrics."""


def requires(role: RouteRole) -> dict[str, Any]:
    """The ``opt`` of a route only ``role`` (or an admin) may call; ``"any"``: any valid key."""
    return {"role": role}


class Principal(BaseModel):
    """Who is calling: a key's tenant and role, and what the tenant may use."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str = Field(description="The tenant that owns what this caller creates and may see.")
    role: Role = Field(description="What the caller may do: app, auditor or admin (everything).")
    key_id: str | None = Field(default=None, description="The key's id; None when auth is off.")
    policies: frozenset[str] | None = Field(
        default=None, description="Policies the tenant may use; None: every loaded policy."
    )
    rate_per_min: int = Field(default=0, ge=0, description="Requests a minute for this key; 0: unlimited.")
    burst: int = Field(default=1, ge=1, description="Requests this key may send at once.")
    max_active_jobs: int = Field(
        default=0, ge=0, description="Queued and running jobs the tenant may have; 0: unlimited."
    )

    def may(self, role: RouteRole) -> bool:
        return role == "any" or self.role == "admin" or self.role == role

    def check_policy(self, name: str) -> None:
        """A policy outside the tenant's list is not found, as if it did not exist."""
        if self.policies is not None and name not in self.policies:
            raise PolicyNotFound(f"no policy named {name!r}")

    def sees_policy(self, name: str) -> bool:
        return self.policies is None or name in self.policies


def anonymous() -> Principal:
    """The caller when auth is off: an admin of the default tenant, unlimited."""
    return Principal(tenant=DEFAULT_TENANT, role="admin")


def principal_for(key: ApiKeyRecord, tenant: TenantRecord, settings: ServiceSettings) -> Principal:
    """A key's principal: the tenant's policies and quotas, or the service's defaults."""
    rate = tenant.rate_per_min if tenant.rate_per_min is not None else settings.rate_per_min
    burst = tenant.burst if tenant.burst is not None else min(settings.rate_burst, max(rate, 1))
    active = tenant.max_active_jobs if tenant.max_active_jobs is not None else settings.max_active_jobs
    return Principal(
        tenant=tenant.name,
        role=key.role,  # type: ignore[arg-type]
        key_id=key.id,
        policies=frozenset(tenant.policies) if tenant.policies is not None else None,
        rate_per_min=rate,
        burst=max(1, burst),
        max_active_jobs=active,
    )


# ------------------------------------------------------------------ keys

KEY_PATTERN = re.compile(r"^assay_([0-9a-f]{16})_([0-9a-f]{64})$")

# scrypt at 16 MiB and ~0.1 s a check: the secret is random, so this guards a leaked table,
# and verified keys are cached (auth_cache_s), so it is paid once per key, not per request.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def new_key() -> tuple[str, str, str]:
    """A fresh key: (id, secret, the key as sent)."""
    key_id, secret = secrets.token_hex(8), secrets.token_hex(32)
    return key_id, secret, f"assay_{key_id}_{secret}"


def parse_key(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    match = KEY_PATTERN.match(token)
    return (match.group(1), match.group(2)) if match else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_secret(secret: str) -> str:
    """``scrypt$N$r$p$salt$hash``: the parameters travel with the hash, so they can be raised later."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            secret.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=64 * 1024 * 1024,
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


def issue_key(
    store: KeyStore, tenant: str, role: Role, name: str | None = None, expires_at: dt.datetime | None = None
) -> tuple[ApiKeyRecord, str]:
    """Create a key for ``tenant`` (created if new); returns its record and the key, shown this once."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    key_id, secret, token = new_key()
    secret_hash = hash_secret(secret)
    record = store.create_key(
        key_id=key_id, tenant=tenant, role=role, name=name, secret_hash=secret_hash, expires_at=expires_at
    )
    return record, token


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key from ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    auth = headers.get("authorization") or ""
    scheme, _, value = auth.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return (headers.get("x-api-key") or "").strip() or None


class Authenticator:
    """Turns a key into a ``Principal``: store lookup and scrypt check in a thread, then cached."""

    TOUCH_EVERY_S = 300.0
    """last_used_at is written at most this often per key."""

    def __init__(self, store: Callable[[], KeyStore], settings: ServiceSettings) -> None:
        self._store = store
        self._settings = settings
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def principal(
        self, token: str | None, before_check: Callable[[], Awaitable[None]] | None = None
    ) -> Principal:
        """The key's principal; ``before_check`` runs before a store read and scrypt (not on a cache hit)."""
        if not token:
            raise Unauthenticated("send an API key: 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
        # The cache is keyed by a hash of the whole key, so a wrong secret never hits a cached entry.
        digest = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        parsed = parse_key(token)
        if parsed is None:
            raise Unauthenticated("the API key is not valid")
        if before_check is not None:
            await before_check()
        principal = await asyncio.to_thread(self._verify, *parsed)
        if self._settings.auth_cache_s > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (principal, time.monotonic() + self._settings.auth_cache_s)
        return principal

    def _verify(self, key_id: str, secret: str) -> Principal:
        store = self._store()
        found = store.key(key_id)
        # Unknown id and wrong secret read the same, so keys' ids cannot be probed.
        if found is None or not verify_secret(secret, found[0].secret_hash):
            raise Unauthenticated("the API key is not valid")
        key, tenant = found
        now = dt.datetime.now(dt.UTC)
        if key.revoked_at is not None:
            raise Unauthenticated("the API key was revoked")
        if key.expires_at is not None and key.expires_at <= now:
            raise Unauthenticated("the API key expired")
        last = key.last_used_at
        if last is None or (now - last).total_seconds() > self.TOUCH_EVERY_S:
            store.touch(key_id)
        return principal_for(key, tenant, self._settings)

    def forget(self, key_id: str) -> None:
        """Drop a key's cached verification (it was revoked by this process)."""
        self._cache = {d: v for d, v in self._cache.items() if v[0].key_id != key_id}


# ------------------------------------------------------------------ the guard


def _litestar_own(handler: BaseRouteHandler) -> bool:
    """The OpenAPI docs and automatic OPTIONS handlers, which Litestar adds itself."""
    return getattr(handler.fn, "__module__", "").startswith("litestar.")


async def authorize(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The app's guard: authenticate, rate-limit, then check the route's role."""
    if handler.opt.get("public") or _litestar_own(handler):
        return
    app: AppState | None = getattr(connection.app.state, "assay", None)
    if app is None:
        raise NotReady("the service is starting")
    if app.settings.auth == "off":
        principal = anonymous()
    else:
        client = connection.client.host if connection.client else "unknown"

        async def throttle_checks() -> None:
            # Each uncached check costs a store read and ~0.1 s of scrypt: bound them per address,
            # so a flood of made-up keys cannot take the CPU (cached keys never come here).
            wait = await app.limiter.hit(f"verify:{client}", KEY_CHECKS)
            if wait is not None:
                raise RateLimited(
                    "too many API key checks from this address", retry_after_s=retry_after_s(wait)
                )

        principal = await app.auth.principal(key_from_headers(connection.headers), throttle_checks)
    if principal.key_id is not None and principal.rate_per_min > 0:
        limit = Limit(principal.rate_per_min, principal.burst)
        wait = await app.limiter.hit(principal.key_id, limit)
        if wait is not None:
            raise RateLimited(
                f"this key may send {limit.rate_per_min} requests a minute ({limit.burst} at once)",
                retry_after_s=retry_after_s(wait),
            )
    required: RouteRole = handler.opt.get("role", "admin")
    if not principal.may(required):
        raise Forbidden(
            f"a key with role {principal.role!r} may not use this route; it needs {required!r}",
            role=principal.role,
            required=required,
        )
    connection.state.principal = principal


def current_principal(request: Request[Any, Any, Any]) -> Principal:
    """The ``principal`` dependency: the caller the guard authenticated."""
    principal: Principal = request.state.principal
    return principal
