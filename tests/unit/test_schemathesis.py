"""schemathesis against the served OpenAPI document: every check, every phase, no failures.

The same engine as ``schemathesis run --checks all`` (examples, coverage,
fuzzing and the stateful phase), in process over ASGI, against the app with
the shipped policies and real models. Generated clients trust the document,
so a request it allows must be accepted, one it forbids must be refused with
a 4xx, and every status, header and content type must be documented.

Bounded by ``ASSAY_FUZZ_EXAMPLES`` examples per operation (default 20) with a
fixed seed (``ASSAY_FUZZ_SEED``) so a failure reproduces.

What the run is told, and why:

* Every check runs, ``use_after_free`` included: cancelling a job or an audit
  run and revoking a key are POSTs to ``.../cancel`` and ``.../revoke`` (the
  record stays readable, so a DELETE would have broken HTTP's meaning).
* Bodies JSON Schema cannot rule out are not generated (``filter_body``): a
  time range whose ``to`` is not after ``from``, ``max_tokens`` and
  ``max_completion_tokens`` that disagree, an inline suite with a repeated
  item id or two group sets for one dimension. The server refuses these
  with a 4xx naming the field.
* No worker runs, so a job never finishes: ``?wait=`` is capped at 0.2 s on
  requests that are otherwise valid (``before_call``), or each would hold
  the request for up to two minutes.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis.config import CacheConfig, SchemathesisConfig
from schemathesis.engine import events, from_schema

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("ASSAY_FUZZ_EXAMPLES", "20"))
SEED = int(os.environ.get("ASSAY_FUZZ_SEED", "0"))
EXCLUDED_CHECKS: list[str] = []  # none: see the module docstring


def _when(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _ordered(window: Any) -> bool:
    """False only for a time range whose 'to' is not after its 'from'."""
    if not isinstance(window, dict):
        return True
    start, end = _when(window.get("from")), _when(window.get("to"))
    if start is None or end is None or (start.tzinfo is None) != (end.tzinfo is None):
        return True
    return end > start


def _consistent_suite(suite: Any) -> bool:
    """False for an inline suite with a repeated item id or two group sets for one dimension."""
    if not isinstance(suite, dict) or not isinstance(suite.get("items"), list):
        return True
    items = [item for item in suite["items"] if isinstance(item, dict)]
    ids = [repr(item.get("id")) for item in items]
    if len(ids) != len(set(ids)):
        return False
    groups: dict[str, Any] = {}
    for item in items:
        dimension = item.get("dimension")
        if item.get("template") is None or not isinstance(dimension, str):
            continue
        chosen = frozenset(item["groups"]) if isinstance(item.get("groups"), list) else dimension
        if groups.setdefault(dimension, chosen) != chosen:
            return False
    return True


def expressible(body: Any) -> bool:
    """Whether ``body`` keeps the cross-field rules JSON Schema cannot state."""
    if not isinstance(body, dict):
        return True
    if not all(_ordered(w) for w in (body, body.get("window"), body.get("baseline"))):
        return False
    tokens, completion = body.get("max_tokens"), body.get("max_completion_tokens")
    if tokens is not None and completion is not None and tokens != completion:
        return False
    return _consistent_suite(body.get("suite"))


def cap_wait(ctx: Any, case: Any, kwargs: Any) -> None:
    query = case.query
    if not query or "wait" not in query:
        return
    try:
        wait = float(query["wait"])
    except (TypeError, ValueError):
        return
    if 0 <= wait <= 120:  # valid: shortened; out of range it must still be refused
        query["wait"] = min(wait, 0.2)


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The app with the shipped policies and a store of its own; schemathesis runs its lifespan."""
    from evaluators.settings import evaluator_settings
    from service.app import create_app
    from service.settings import ServiceSettings
    from workers.settings import worker_settings

    data = tmp_path_factory.mktemp("fuzz-data")
    shipped = evaluator_settings().model_copy(update={"policy_dir": ROOT / "policies"})
    store = worker_settings().model_copy(update={"data_dir": data, "database_url": ""})
    # Held for the whole module: the lifespan starts on schemathesis's first request.
    with evaluator_settings.override(shipped), worker_settings.override(store):
        yield create_app(ServiceSettings(max_body_bytes=200_000, embedded_worker=False))


def _answer(interaction: Any) -> str:
    response = getattr(interaction, "response", None)
    if response is None:
        return "no response"
    return f"{response.status_code} {(response.content or b'')[:300]!r}"


def run(app: Any, examples: int = EXAMPLES) -> tuple[int, Counter[tuple[str, str, str]], list[str]]:
    """(cases sent, failures by (check, operation, title) with one sample each, engine errors)."""
    # No cache of past runs in the checkout: each run stands on its seed.
    config = SchemathesisConfig(cache=CacheConfig(enabled=False))
    config.update(seed=SEED, max_failures=None)
    project = config.projects.override
    project.checks.update(included_check_names=["all"], excluded_check_names=EXCLUDED_CHECKS)
    project.generation.update(max_examples=examples)
    project.phases.update(phases=["examples", "coverage", "fuzzing", "stateful"])
    project.update(request_timeout=60)
    schema = schemathesis.openapi.from_asgi("/docs/openapi.json", app, config=config)
    schema.hook("filter_body")(lambda ctx, body: expressible(body))
    schemathesis.hook("before_call")(cap_wait)
    cases = 0
    failures: Counter[tuple[str, str, str]] = Counter()
    errors: list[str] = []
    try:
        for event in from_schema(schema).execute():
            if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
                cases += len(event.recorder.cases)
                for case_id, checks in event.recorder.checks.items():
                    for check in checks:
                        if check.status.value == "failure" and check.failure_info is not None:
                            failure = check.failure_info.failure
                            key = (check.name, event.recorder.label, failure.title)
                            if key not in failures:
                                sample = check.failure_info.code_sample
                                got = _answer(event.recorder.interactions.get(case_id))
                                errors.append(f"{key}: {failure.message}\n{sample}\n-> {got}")
                            failures[key] += 1
            elif isinstance(event, events.NonFatalError):
                errors.append(f"error on {event.label}: {event.value!r}")
            elif isinstance(event, events.FatalError):
                errors.append(f"fatal: {event.exception!r}")
    finally:
        schemathesis.hooks.GLOBAL_HOOK_DISPATCHER.unregister(cap_wait)
    return cases, failures, errors


def test_openapi_document_holds_under_schemathesis(fuzzed_app: Any) -> None:
    started = time.perf_counter()
    cases, failures, errors = run(fuzzed_app)
    elapsed = time.perf_counter() - started
    print(f"schemathesis: {cases} cases, {sum(failures.values())} failures, {elapsed:.0f} s")
    assert not errors, "\n\n".join(errors[:10])
    assert cases > 20 * EXAMPLES, cases  # every operation and phase ran


def test_cross_field_filter_keeps_what_it_should() -> None:
    assert expressible({"window": {"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"}})
    assert not expressible({"window": {"from": "2026-01-02T00:00:00Z", "to": "2026-01-02T00:00:00Z"}})
    assert not expressible({"max_tokens": 5, "max_completion_tokens": 6})
    assert not expressible({"suite": {"items": [{"id": "a"}, {"id": "a"}]}})
    assert expressible({"suite": "safety", "samples_per_prompt": 2})
