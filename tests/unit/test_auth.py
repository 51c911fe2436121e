"""API keys, roles and rate limits in process: the real app with ASSAY_AUTH=required, keys in a real store.

Light policies (``tests/fixtures/tenant_policies``: pattern recognizers only) keep the
app's start short. Cross-tenant isolation over real processes is in
``tests/integration/test_tenants.py``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evaluators.errors import Unauthenticated
from service.auth import (
    ROLES,
    Authenticator,
    Principal,
    hash_secret,
    issue_key,
    new_key,
    parse_key,
    verify_secret,
)
from service.ratelimit import Limit, LocalLimiter
from service.settings import ServiceSettings
from store.keys import KeyStore, key_store

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "tests" / "fixtures" / "tenant_policies"


# ------------------------------------------------------------------ keys and hashes


def test_a_key_is_its_id_and_a_secret_and_only_the_hash_verifies() -> None:
    key_id, secret, token = new_key()
    assert parse_key(token) == (key_id, secret) and len(secret) == 64
    stored = hash_secret(secret)
    assert stored.startswith("scrypt$") and secret not in stored
    assert verify_secret(secret, stored)
    assert not verify_secret(secret[:-1] + ("0" if secret[-1] != "0" else "1"), stored)
    assert hash_secret(secret) != stored  # salted
    for bad in ("", "assay_", token + "0", token.upper(), "Bearer " + token, token.replace("_", "-")):
        assert parse_key(bad) is None
    assert not verify_secret(secret, "md5$abc") and not verify_secret(secret, "garbage")


# ------------------------------------------------------------------ the in-process limiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_the_burst_then_says_when_to_come_back() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    limit = Limit(rate_per_min=6, burst=3)  # one token every 10 s
    assert [limiter.take("k", limit) for _ in range(3)] == [None, None, None]
    assert limiter.take("k", limit) == pytest.approx(10.0)
    assert limiter.take("other", limit) is None  # buckets are per key
    clock.now += 4
    assert limiter.take("k", limit) == pytest.approx(6.0)
    clock.now += 6
    assert limiter.take("k", limit) is None
    clock.now += 3600  # refills to the burst, not beyond
    assert [limiter.take("k", limit) for _ in range(4)][-1] == pytest.approx(10.0)


def test_local_limiter_forgets_the_least_recently_used_keys() -> None:
    limiter = LocalLimiter(max_keys=2, clock=Clock())
    limit = Limit(rate_per_min=1, burst=1)
    assert limiter.take("a", limit) is None and limiter.take("b", limit) is None
    assert limiter.take("c", limit) is None  # evicts a
    assert limiter.take("a", limit) is None  # a starts full again
    assert limiter.take("c", limit) is not None


# ------------------------------------------------------------------ the authenticator on a real store


@pytest.fixture
def ks(tmp_path: Path) -> Iterator[KeyStore]:
    from store.db import reset_stores

    yield key_store(f"sqlite:///{tmp_path}/assay.db")
    reset_stores()


def _run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def test_authenticator_gives_the_tenant_policies_and_quotas(ks: KeyStore) -> None:
    ks.save_tenant("acme", {"policies": ["default"], "rate_per_min": 30, "max_active_jobs": 2})
    record, token = issue_key(ks, "acme", "auditor", "ci")
    auth = Authenticator(lambda: ks, ServiceSettings(auth="required", rate_burst=60))
    p = _run(auth.principal(token))
    assert p == Principal(
        tenant="acme",
        role="auditor",
        key_id=record.id,
        policies=frozenset({"default"}),
        rate_per_min=30,
        burst=30,  # the service's burst, capped at the tenant's rate
        max_active_jobs=2,
    )
    assert ks.keys("acme")[0].last_used_at is not None
    # A tenant with no settings takes the service's defaults.
    _, other = issue_key(ks, "globex", "app")
    q = _run(auth.principal(other))
    assert (q.policies, q.rate_per_min, q.burst, q.max_active_jobs) == (None, 600, 60, 0)


@pytest.mark.parametrize("variant", ["missing", "malformed", "unknown id", "wrong secret"])
def test_bad_keys_are_refused_alike(ks: KeyStore, variant: str) -> None:
    _, token = issue_key(ks, "acme", "app")
    sent = {
        "missing": None,
        "malformed": "not-a-key",
        "unknown id": "assay_" + "0" * 16 + token[22:],
        "wrong secret": token[:-4] + "0000",
    }[variant]
    auth = Authenticator(lambda: ks, ServiceSettings(auth="required"))
    with pytest.raises(Unauthenticated) as err:
        _run(auth.principal(sent))
    if variant != "missing":
        assert err.value.detail == "the API key is not valid"  # ids cannot be probed


def test_revoked_and_expired_keys_stop_working(ks: KeyStore) -> None:
    record, token = issue_key(ks, "acme", "app")
    cached = Authenticator(lambda: ks, ServiceSettings(auth="required", auth_cache_s=60))
    uncached = Authenticator(lambda: ks, ServiceSettings(auth="required", auth_cache_s=0))
    assert _run(cached.principal(token)).key_id == record.id
    assert ks.revoke(record.id) is not None
    with pytest.raises(Unauthenticated, match="revoked"):
        _run(uncached.principal(token))
    # Another process trusts its cached check for auth_cache_s; this process forgets at once.
    assert _run(cached.principal(token)).key_id == record.id
    cached.forget(record.id)
    with pytest.raises(Unauthenticated, match="revoked"):
        _run(cached.principal(token))
    first = ks.revoke(record.id)
    assert first is not None and ks.revoke(record.id) == first  # revoked once
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    _, old = issue_key(ks, "acme", "app", expires_at=past)
    with pytest.raises(Unauthenticated, match="expired"):
        _run(uncached.principal(old))


def test_keys_are_listed_and_revoked_per_tenant(ks: KeyStore) -> None:
    a, _ = issue_key(ks, "acme", "admin")
    b, _ = issue_key(ks, "globex", "app")
    assert [k.id for k in ks.keys("acme")] == [a.id]
    assert {k.id for k in ks.keys(tenant=None)} == {a.id, b.id}
    assert ks.revoke(b.id, tenant="acme") is None  # not acme's
    assert ks.key(b.id) is not None and ks.key(b.id)[0].revoked_at is None  # type: ignore[index]
    with pytest.raises(ValueError, match="role must be one of"):
        issue_key(ks, "acme", "root")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown tenant fields"):
        ks.save_tenant("acme", {"owner": "x"})


# ------------------------------------------------------------------ the app: 401, 403, 429


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, str]]]:
    """The real app with keys required and one key per role of tenant acme (plus a slow one)."""
    from litestar.testing import TestClient

    from evaluators.settings import evaluator_settings
    from service.app import create_app
    from store.db import reset_stores
    from workers.settings import worker_settings

    data = tmp_path_factory.mktemp("auth-data")
    store = worker_settings().model_copy(update={"data_dir": data, "database_url": ""})
    policies = evaluator_settings().model_copy(update={"policy_dir": POLICIES})
    ks = key_store(store.resolved_database_url())
    tokens = {role: issue_key(ks, "acme", role)[1] for role in ROLES}
    ks.save_tenant("slow", {"rate_per_min": 6, "burst": 2})
    tokens["slow"] = issue_key(ks, "slow", "admin")[1]
    tokens["other"] = issue_key(ks, "globex", "admin")[1]
    app = create_app(ServiceSettings(auth="required", embedded_worker=False, auth_cache_s=60))
    client = TestClient(app=app)
    with evaluator_settings.override(policies), worker_settings.override(store):
        client.__enter__()
    try:
        yield client, tokens
    finally:
        client.__exit__(None, None, None)
        reset_stores()


def _problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["type"].endswith("/" + code) and body["status"] == status and body["detail"]
    return body


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic dXNlcjpwdw=="}, {"X-API-Key": ""}],
)
def test_missing_or_invalid_key_is_401_problem_with_a_challenge(
    secured: tuple[Any, dict[str, str]], headers: dict[str, str]
) -> None:
    client, _ = secured
    r = client.get("/v1/policies", headers=headers)
    _problem(r, 401, "unauthenticated")
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_openai_routes_answer_401_and_403_in_openai_shape(secured: tuple[Any, dict[str, str]]) -> None:
    client, tokens = secured
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"]["code"] == "unauthenticated"
    r = client.post("/v1/chat/completions", json=body, headers={"X-API-Key": tokens["auditor"]})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_health_metrics_and_docs_stay_open(secured: tuple[Any, dict[str, str]]) -> None:
    client, _ = secured
    for path in ("/healthz", "/readyz", "/metrics", "/docs/openapi.json", "/docs/swagger"):
        assert client.get(path).status_code == 200, path
    schema = client.get("/docs/openapi.json").json()
    assert schema["security"] == [{"bearer": []}, {"apiKey": []}]
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


OPENAI_PATHS = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/moderations"}


def _routes(app: Any) -> list[tuple[str, str, Any]]:
    """(method, path, role) of every route the app serves, from its route table."""
    out = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if handler.opt.get("public") or handler.fn.__module__.startswith("litestar."):
                continue
            for method in sorted(handler.http_methods):
                out.append((method, route.path, handler.opt.get("role")))
    return out


def test_every_route_declares_who_may_call_it() -> None:
    from service.app import create_app

    routes = _routes(create_app(ServiceSettings()))
    assert len(routes) >= 20
    undeclared = [(m, p) for m, p, role in routes if role not in ("app", "auditor", "admin", "any")]
    assert not undeclared, f"declare opt=requires(...) or PUBLIC on {undeclared}"


def test_each_role_reaches_exactly_its_routes(secured: tuple[Any, dict[str, str]]) -> None:
    """Every route of the route table, with a key of every role: 403 exactly where the role may not go."""
    client, tokens = secured
    checked = 0
    for method, template, required in _routes(client.app):
        path = template.replace("{", "").replace("}", "").replace(":str", "")  # dummy ids
        for role in ROLES:
            r = client.request(method, path, json={}, headers={"Authorization": f"Bearer {tokens[role]}"})
            allowed = required == "any" or role == "admin" or role == required
            if allowed:
                assert r.status_code != 403, (method, template, role, r.text)
            else:
                body = r.json()["error"] if path in OPENAI_PATHS else _problem(r, 403, "forbidden")
                assert required in str(body), (method, template, role)
            checked += 1
    assert checked >= 60


def test_rate_limit_is_429_with_retry_after(secured: tuple[Any, dict[str, str]]) -> None:
    client, tokens = secured
    headers = {"X-API-Key": tokens["slow"]}
    assert [client.get("/v1/policies", headers=headers).status_code for _ in range(2)] == [200, 200]
    r = client.get("/v1/policies", headers=headers)
    body = _problem(r, 429, "rate-limited")
    assert r.headers["retry-after"] == str(body["retry_after_s"]) and 1 <= body["retry_after_s"] <= 10
    # Other keys have buckets of their own.
    assert client.get("/v1/policies", headers={"X-API-Key": tokens["app"]}).status_code == 200


def test_admin_keys_manage_keys_of_their_tenant(secured: tuple[Any, dict[str, str]]) -> None:
    client, tokens = secured
    admin = {"X-API-Key": tokens["admin"]}
    r = client.post("/v1/keys", json={"role": "app", "name": "web"}, headers=admin)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["tenant"] == "acme" and created["key"].startswith("assay_" + created["id"])
    assert "secret_hash" not in created
    new = {"X-API-Key": created["key"]}
    assert client.get("/v1/policies", headers=new).status_code == 200
    listed = client.get("/v1/keys", headers=admin).json()["keys"]
    assert created["id"] in {k["id"] for k in listed} and all("key" not in k for k in listed)
    assert client.post(f"/v1/keys/{created['id']}/revoke", headers=admin).json()["revoked_at"]
    _problem(client.get("/v1/policies", headers=new), 401, "unauthenticated")
    # Another tenant's admin does not see acme's keys, nor can revoke them.
    other = {"X-API-Key": tokens["other"]}
    assert client.get("/v1/keys", headers=other).json()["keys"][0]["tenant"] == "globex"
    _problem(client.post(f"/v1/keys/{listed[0]['id']}/revoke", headers=other), 404, "not-found")
    assert client.get("/v1/policies", headers=admin).status_code == 200


def test_uncached_key_checks_are_bounded_per_address(secured: tuple[Any, dict[str, str]]) -> None:
    """Made-up keys cost a store read (and a real id with a wrong secret, scrypt): at most a burst of 30."""
    client, tokens = secured
    statuses = [
        client.get("/v1/policies", headers={"X-API-Key": f"assay_{i:016x}_{'0' * 64}"}).status_code
        for i in range(40)
    ]
    assert statuses[:10] == [401] * 10 and statuses[-1] == 429
    r = client.get("/v1/policies", headers={"X-API-Key": "assay_" + "f" * 16 + "_" + "0" * 64})
    _problem(r, 429, "rate-limited")
    assert int(r.headers["retry-after"]) >= 1
    # A key this process has already checked is served from the cache, throttle or not.
    assert client.get("/v1/policies", headers={"X-API-Key": tokens["admin"]}).status_code == 200


def test_auth_off_is_said_at_startup(caplog: pytest.LogCaptureFixture) -> None:
    from service.app import log_auth_mode

    with caplog.at_level("INFO", logger="service.app"):
        log_auth_mode(ServiceSettings())
        log_auth_mode(ServiceSettings(auth="required"))
    off, on = caplog.records[-2:]
    assert off.levelname == "WARNING" and "authentication is OFF" in off.getMessage()
    assert "ASSAY_AUTH=required" in off.getMessage() and "required" in on.getMessage()
