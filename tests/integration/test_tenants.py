"""Tenants over real processes: the API process with ASSAY_AUTH=required, real Redis, keys made by the CLI.

Tenant A (``acme``: both test policies) creates a job, two audits, a drift report
and a baseline; tenant B (``globex``: policy ``default`` only) holds an *admin*
key, so no role ever stops it: whatever it is refused, tenant isolation refused.
Every route of the app's route table is classified below, and the test over the
table fails for a route that is not, so a new route cannot be forgotten.

No worker serves this stack's queues: jobs, audits and reports stay queued,
which is all the isolation checks need, and lets the queue fill up for the
backpressure test.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from devstack.stack import Stack, StackError, start_stack

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "tests" / "fixtures" / "tenant_policies"
MAX_QUEUE_DEPTH = 8
NOW = dt.datetime.now(dt.UTC)
WINDOW = {"from": (NOW - dt.timedelta(hours=2)).isoformat(), "to": (NOW - dt.timedelta(hours=1)).isoformat()}
LATER = {"from": (NOW - dt.timedelta(hours=1)).isoformat(), "to": NOW.isoformat()}


def _app_routes() -> list[tuple[str, str]]:
    """(method, path template) of every route the app serves, from its route table."""
    from service.app import create_app
    from service.settings import ServiceSettings

    app = create_app(ServiceSettings())
    routes = set()
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if handler.fn.__module__.startswith("litestar."):  # the docs, automatic OPTIONS
                continue
            routes.update((method, route.path) for method in handler.http_methods if method != "OPTIONS")
    return sorted(routes)


ROUTES = _app_routes()

# Path parameters -> the tenant-A resource whose id goes there.
PARAMS = {
    "job_id": "job",
    "run_id": "audit",
    "run_a": "audit",
    "run_b": "audit2",
    "report_id": "report",
    "key_id": "key",
    "name": "policy",
}

# Routes that hold no tenant's data.
OPEN = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/v1/drift/recorder")}


@dataclass
class World:
    stack: Stack
    tokens: dict[str, str]
    key_ids: dict[str, str]
    ids: dict[str, str] = field(default_factory=dict)

    def call(self, who: str, method: str, path: str, body: Any = None) -> httpx.Response:
        with self.stack.client(timeout=30) as c:
            return c.request(method, path, json=body, headers={"Authorization": f"Bearer {self.tokens[who]}"})


def cli(stack: Stack, *args: str) -> Any:
    """Run ``assay ARGS --json``-style commands against the stack's store; the last JSON line of stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(("{", "["))]
    return json.loads(lines[-1]) if lines else done.stdout


@pytest.fixture(scope="module")
def world(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    env = {
        "ASSAY_AUTH": "required",
        "ASSAY_AUTH_CACHE_S": "2",  # a key revoked by the CLI is refused within 2 s
        "ASSAY_POLICY_DIR": str(POLICIES),
        "ASSAY_MAX_QUEUE_DEPTH": str(MAX_QUEUE_DEPTH),
    }
    try:
        stack = start_stack(redis_url, tmp_path_factory.mktemp("tenants"), workers=0, extra_env=env)
    except StackError as exc:
        pytest.fail(str(exc))
    try:
        cli(stack, "tenants", "set", "acme", "--policies", "default,private")
        cli(stack, "tenants", "set", "globex", "--policies", "default")
        cli(stack, "tenants", "set", "slow", "--rate-per-min", "6", "--burst", "2")
        cli(stack, "tenants", "set", "quota", "--max-active-jobs", "1")
        made = {
            "a_admin": ("acme", "admin"),
            "a_app": ("acme", "app"),
            "b_admin": ("globex", "admin"),
            "slow": ("slow", "app"),
            "quota": ("quota", "app"),
        }
        created = {
            who: cli(stack, "keys", "create", "--tenant", t, "--role", r, "--json")
            for who, (t, r) in made.items()
        }
        w = World(stack, {k: v["key"] for k, v in created.items()}, {k: v["id"] for k, v in created.items()})
        _create_tenant_a_resources(w)
        yield w
    finally:
        stack.close()


def _created(r: httpx.Response) -> str:
    assert r.status_code in (201, 202), r.text
    return str(r.json().get("id") or r.json().get("name"))


def _create_tenant_a_resources(w: World) -> None:
    w.ids["job"] = _created(w.call("a_app", "POST", "/v1/generations", {"prompt": "hello"}))
    for name in ("audit", "audit2"):
        w.ids[name] = _created(
            w.call("a_admin", "POST", "/v1/audits", {"suite": "safety", "policy": "private"})
        )
    body = {"policy": "private", "baseline": WINDOW, "window": LATER}
    w.ids["report"] = _created(w.call("a_admin", "POST", "/v1/drift/reports", body))
    body = {"name": "a-launch", "policy": "private", **WINDOW}
    w.ids["baseline"] = _created(w.call("a_admin", "POST", "/v1/drift/baselines", body))
    w.ids["key"] = w.key_ids["a_app"]
    w.ids["policy"] = "private"
    # What B may see, so that its listings are not empty: its own report, a baseline of a shared policy.
    _created(
        w.call(
            "b_admin", "POST", "/v1/drift/reports", {"policy": "default", "baseline": WINDOW, "window": LATER}
        )
    )
    _created(
        w.call("a_admin", "POST", "/v1/drift/baselines", {"name": "shared", "policy": "default", **WINDOW})
    )


def _listing_hides_a(w: World, r: httpx.Response, path: str) -> None:
    assert r.status_code == 200, r.text
    body = r.json()
    found: set[str] = {
        "/v1/policies": lambda: {p["name"] for p in body["policies"]},
        "/v1/models": lambda: {m["id"] for m in body["data"]},
        "/v1/drift/reports": lambda: {x["id"] for x in body["reports"]},
        "/v1/drift/baselines": lambda: {x["name"] for x in body["baselines"]},
        "/v1/keys": lambda: {x["id"] for x in body["keys"]},
    }[path]()
    assert found, f"{path} lists nothing for B: the check would prove nothing"
    assert not found & {w.ids["policy"], "smollm2@private", w.ids["report"], "a-launch", w.ids["key"]}, found


# Routes without a tenant resource in the path: what B sends, naming A's resources or A-only policies.
CHAT = [{"role": "user", "content": "hi"}]
BODIES: dict[tuple[str, str], Callable[[World], Any]] = {
    ("POST", "/v1/moderate"): lambda w: {"text": "x", "policy": "private"},
    ("POST", "/v1/moderate/batch"): lambda w: {"texts": ["x"], "policy": "private"},
    ("POST", "/v1/generations"): lambda w: {"prompt": "x", "policy": "private"},
    ("POST", "/v1/audits"): lambda w: {"suite": "safety", "policy": "private"},
    ("POST", "/v1/drift/reports"): lambda w: {
        "policy": "default", "baseline": {"audit": w.ids["audit"]}, "window": LATER
    },
    ("POST", "/v1/drift/baselines"): lambda w: {"name": "b", "policy": "default", "audit": w.ids["audit"]},
    ("POST", "/v1/chat/completions"): lambda w: {"model": "smollm2@private", "messages": CHAT},
    ("POST", "/v1/completions"): lambda w: {"model": "smollm2@private", "prompt": "x"},
    ("POST", "/v1/moderations"): lambda w: {"input": "x", "model": "omni@private"},
    # A key for another tenant cannot be asked for: the body has no tenant (400, extra field).
    ("POST", "/v1/keys"): lambda w: {"role": "admin", "tenant": "acme"},
}  # fmt: skip
LISTINGS = {
    ("GET", p) for p in ("/v1/policies", "/v1/models", "/v1/drift/reports", "/v1/drift/baselines", "/v1/keys")
}


def _path_params(template: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in template.split("/") if part.startswith("{")]


def test_every_route_of_the_app_is_classified() -> None:
    unclassified = [
        (m, p)
        for m, p in ROUTES
        if (not _path_params(p) and (m, p) not in OPEN | LISTINGS | set(BODIES))
        or any(name not in PARAMS for name in _path_params(p))
    ]
    assert not unclassified, f"say how tenant isolation is checked on {unclassified} (test_tenants.py)"
    assert len(ROUTES) >= 25


@pytest.mark.parametrize(("method", "template"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_tenant_b_never_reaches_tenant_a(world: World, method: str, template: str) -> None:
    if (method, template) in OPEN:
        assert world.call("b_admin", method, template).status_code == 200
        return
    if (method, template) in LISTINGS:
        _listing_hides_a(world, world.call("b_admin", method, template), template)
        return
    if (method, template) in BODIES:
        r = world.call("b_admin", method, template, BODIES[(method, template)](world))
        expected = 400 if template == "/v1/keys" else 404
        assert r.status_code == expected, r.text
        return
    path = template
    for name in _path_params(template):
        path = path.replace(f"{{{name}:str}}", world.ids[PARAMS[name]]).replace(
            f"{{{name}}}", world.ids[PARAMS[name]]
        )
    r = world.call("b_admin", method, path, {} if method == "POST" else None)
    assert r.status_code == 404, (path, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"].endswith("not-found")
    if method == "GET":
        # The same request by A finds it (200, or 400/409 while nothing is built yet): the ids are real.
        mine = world.call("a_admin", method, path)
        assert mine.status_code in (200, 400, 409), (path, mine.text)


def test_tenant_bs_requests_changed_nothing_of_tenant_a(world: World) -> None:
    assert world.call("a_app", "GET", f"/v1/jobs/{world.ids['job']}").json()["status"] == "queued"
    for run in ("audit", "audit2"):
        assert world.call("a_admin", "GET", f"/v1/audits/{world.ids[run]}").json()["status"] == "queued"
    assert world.call("a_app", "GET", "/v1/policies").status_code == 200  # its key was not revoked
    r = world.call("a_admin", "POST", f"/v1/jobs/{world.ids['job']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"


def test_roles_and_missing_keys_are_problem_details(world: World) -> None:
    r = world.call("a_app", "POST", "/v1/audits", {"suite": "safety"})
    assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["required"] == "auditor" and r.json()["role"] == "app"
    with world.stack.client() as c:
        r = c.get("/v1/drift/reports")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"].startswith("application/problem+json")


def test_rate_limit_lives_in_redis_and_answers_429_with_retry_after(world: World, redis_url: str) -> None:
    statuses = [world.call("slow", "GET", "/v1/policies").status_code for _ in range(2)]
    r = world.call("slow", "GET", "/v1/policies")
    assert statuses == [200, 200] and r.status_code == 429, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert 1 <= int(r.headers["retry-after"]) <= 10 and r.json()["retry_after_s"] == int(
        r.headers["retry-after"]
    )
    bucket = f"assay:ratelimit:{world.key_ids['slow']}"
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.exists(bucket) and 0 < client.pttl(bucket) <= 21_000
        client.delete(bucket)  # the state is in Redis, not in the API process: a full bucket again
        assert world.call("slow", "GET", "/v1/policies").status_code == 200
    finally:
        client.close()


def test_revoked_key_is_refused_on_its_next_request(world: World) -> None:
    key = cli(world.stack, "keys", "create", "--tenant", "acme", "--role", "app", "--json")
    world.tokens["temp"] = key["key"]
    assert world.call("temp", "GET", "/v1/policies").status_code == 200
    out = cli(world.stack, "keys", "revoke", key["id"])
    assert f"revoked key {key['id']}" in out
    deadline = time.monotonic() + 10
    while (r := world.call("temp", "GET", "/v1/policies")).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.25)  # the API trusts a checked key for ASSAY_AUTH_CACHE_S
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    listed = cli(world.stack, "keys", "list", "--tenant", "acme", "--json")
    assert next(k for k in listed if k["id"] == key["id"])["revoked_at"] and all(
        "key" not in k for k in listed
    )


def test_tenant_job_quota_is_429_until_a_job_finishes(world: World) -> None:
    body = {"prompt": "x", "model": "parked-model"}
    first = _created(world.call("quota", "POST", "/v1/generations", body))
    r = world.call("quota", "POST", "/v1/generations", body)
    assert r.status_code == 429 and r.json()["quota"] == "max_active_jobs" and r.headers["retry-after"]
    assert world.call("quota", "POST", f"/v1/jobs/{first}/cancel").status_code == 200
    _created(world.call("quota", "POST", "/v1/generations", body))


def test_a_queue_deeper_than_allowed_is_503_with_retry_after(world: World, redis_url: str) -> None:
    queue = f"{world.stack.queue}-parked"  # parked-model's queue: no worker takes from it
    client = redis.Redis.from_url(redis_url)
    try:
        refused = None
        for _ in range(MAX_QUEUE_DEPTH + 10):
            r = world.call("a_app", "POST", "/v1/generations", {"prompt": "x", "model": "parked-model"})
            if r.status_code == 503:
                refused = r
                break
            assert r.status_code == 202, r.text
            time.sleep(0.2)  # the API reads the depth at most once a second
        assert refused is not None, "the queue grew past its limit and nothing was refused"
        assert client.llen(queue) >= MAX_QUEUE_DEPTH
        assert refused.headers["retry-after"] and refused.json()["queue"] == queue
        assert refused.headers["content-type"].startswith("application/problem+json")
        client.delete(queue)  # drained
        time.sleep(1.1)
        _created(world.call("a_app", "POST", "/v1/generations", {"prompt": "x", "model": "parked-model"}))
    finally:
        client.close()
