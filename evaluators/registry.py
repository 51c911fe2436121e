"""The explicit registry of checks: name -> (config model, check class).

Adding a check means adding one line here; ``tests/unit/test_registry.py``
fails if a check module exists that is not registered.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from typing import Any

from evaluators.checks.base import Check


@dataclass(frozen=True)
class Registration:
    name: str
    config: type[Any]
    factory: type[Any]


def _registrations() -> dict[str, Registration]:
    # Imported here, not at module top: check modules keep their heavy imports
    # (presidio, torch) inside load(), so this stays cheap.
    from evaluators.checks import bias, hallucination, pii, toxicity

    regs = [
        Registration("pii", pii.PiiConfig, pii.PiiCheck),
        Registration("toxicity", toxicity.ToxicityConfig, toxicity.ToxicityCheck),
        Registration("hallucination", hallucination.HallucinationConfig, hallucination.HallucinationCheck),
        Registration("bias", bias.BiasConfig, bias.BiasCheck),
    ]
    return {r.name: r for r in regs}


REGISTRY: dict[str, Registration] = _registrations()


def check_config_union() -> Any:
    """The tagged union of every registered config model, for the policy schema."""
    configs: list[Any] = [r.config for r in REGISTRY.values()]
    return reduce(lambda a, b: a | b, configs)


def build_check(config: Any) -> Check:
    """Instantiate the check a config entry names (models load later, in ``load()``)."""
    reg = REGISTRY[config.check]
    check: Check = reg.factory(config)
    return check
