"""Generation parameters: request values over policy defaults, checked against policy limits."""

from __future__ import annotations

from typing import Any

from evaluators.errors import InputError, LimitExceeded
from evaluators.policy import Policy

KNOWN = {"temperature", "top_k", "top_p", "max_new_tokens", "stop", "seed", "repetition_penalty"}


def resolve_params(policy: Policy, requested: dict[str, Any] | None) -> dict[str, Any]:
    """Merge ``requested`` over the policy's defaults; raise ``LimitExceeded`` outside its limits.

    Returns plain JSON-able values: this runs in the API (to answer 422 before
    queueing) and again in the worker (the worker trusts no message).
    """
    requested = dict(requested or {})
    unknown = set(requested) - KNOWN
    if unknown:
        raise InputError(f"unknown generation parameters: {', '.join(sorted(unknown))}")
    params = policy.generation.defaults.model_dump()
    params.update({k: v for k, v in requested.items() if v is not None})
    if isinstance(params["stop"], str):
        params["stop"] = [params["stop"]]
    params["stop"] = list(params["stop"])
    limits = policy.generation.limits
    problems: list[str] = []
    for name in ("temperature", "top_k", "top_p", "max_new_tokens", "repetition_penalty"):
        value = params[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{name} must be a number, not {value!r}")
        bounds = getattr(limits, name)
        if bounds.min is not None and value < bounds.min:
            problems.append(f"{name}={value} is below the policy minimum {bounds.min:g}")
        if bounds.max is not None and value > bounds.max:
            problems.append(f"{name}={value} is above the policy maximum {bounds.max:g}")
    for name in ("top_k", "max_new_tokens"):
        if params[name] != int(params[name]):
            raise InputError(f"{name} must be an integer")
        params[name] = int(params[name])
    if len(params["stop"]) > limits.max_stop_sequences:
        problems.append(
            f"{len(params['stop'])} stop sequences sent; the policy allows {limits.max_stop_sequences}"
        )
    if any(not isinstance(s, str) or not s for s in params["stop"]):
        raise InputError("stop sequences must be non-empty strings")
    if params["seed"] is not None and not isinstance(params["seed"], int):
        raise InputError("seed must be an integer")
    if problems:
        raise LimitExceeded("; ".join(problems), policy=policy.name)
    return params
