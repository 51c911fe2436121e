"""Every check module is registered, and every registration is a real check."""

from __future__ import annotations

import importlib
import pkgutil
import typing

import evaluators.checks as checks_pkg
from evaluators.checks.base import Check
from evaluators.policy import Policy
from evaluators.registry import REGISTRY, build_check

# Modules in evaluators/checks that hold shared plumbing, not a check.
NOT_CHECKS = {
    "base",
    "config",
    "hallucination_evidence",
    "hallucination_nli",
    "pii_engine",
    "pii_recognizers",
    "pii_view",
    "toxicity_loading",
}


def test_every_check_module_is_registered() -> None:
    modules = {m.name for m in pkgutil.iter_modules(checks_pkg.__path__)} - NOT_CHECKS
    registered_modules = {r.factory.__module__.rsplit(".", 1)[-1] for r in REGISTRY.values()}
    assert modules == registered_modules


def test_registrations_are_consistent() -> None:
    for name, reg in REGISTRY.items():
        tag = reg.config.model_fields["check"].annotation
        assert typing.get_args(tag) == (name,), f"{reg.config.__name__} tag != {name}"
        assert reg.factory.name == name
        module = importlib.import_module(reg.factory.__module__)
        assert getattr(module, reg.factory.__name__) is reg.factory


def test_every_registered_check_is_in_the_policy_schema() -> None:
    schema = Policy.model_json_schema()
    tags = set()
    for d in schema["$defs"].values():
        check = d.get("properties", {}).get("check", {})
        if "const" in check:
            tags.add(check["const"])
        tags.update(check.get("enum", []))
    assert tags == set(REGISTRY)


def test_build_check_satisfies_the_protocol() -> None:
    for name, reg in REGISTRY.items():
        # Minimal valid config per check: the union validates it.
        config = Policy.model_validate({"name": "x", "version": "1", "output": [_minimal(name)]}).output[0]
        check = build_check(config)
        assert isinstance(check, Check), name
        assert check.name == name
        assert isinstance(config, reg.config)


def _minimal(name: str) -> dict[str, object]:
    if name == "pii":
        return {"check": "pii", "entities": {"EMAIL_ADDRESS": {"threshold": 0.5}}}
    return {"check": name}
