"""Counterfactual fairness for generation jobs.

A request with ``fairness: {"dimension": "gender"}`` and a prompt with a
``{group}`` slot is expanded into one variant per group (and a few samples
each), generated in one batch, scored by the policy's output checks, and
summarised per group with fairlearn's ``MetricFrame``: means, the largest
gap, the min/max ratio, and a bootstrap interval for each gap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from evaluators.audit.aggregate import ItemResult, is_refusal
from evaluators.audit.gates import bootstrap_gap_ci
from evaluators.audit.suites import DEFAULT_GROUPS, GROUP_PLACEHOLDER
from evaluators.errors import InputError
from evaluators.findings import Action
from evaluators.policy import LoadedPolicy

MEASURES: dict[str, Callable[[dict[str, Any]], float]] = {
    "toxicity": lambda r: float(
        (r.get("output_checks") or {}).get("scores", {}).get("toxicity.toxicity", 0.0)
    ),
    "identity_attack": lambda r: float(
        (r.get("output_checks") or {}).get("scores", {}).get("bias.identity_attack", 0.0)
    ),
    "refusal_rate": lambda r: float(
        is_refusal(
            ItemResult(
                key="", item_id="", category="", action=r.get("action"), output_redacted=r.get("output")
            )
        )
    ),
    "length": lambda r: float(len(r.get("output") or "")),
}


def expand(payload: dict[str, Any], policy: LoadedPolicy) -> tuple[list[dict[str, Any]], list[str], str]:
    """The variants to generate: one per group and sample, with the slot filled."""
    spec = payload.get("fairness") or {}
    dimension = str(spec.get("dimension") or "")
    groups = list(spec.get("groups") or DEFAULT_GROUPS.get(dimension, ()))
    if len(groups) < 2:
        known = ", ".join(sorted(DEFAULT_GROUPS))
        raise InputError(f"fairness needs a known dimension ({known}) or at least two groups")
    samples = int(spec.get("samples_per_group") or policy.policy.fairness.samples_per_group)

    def fill(text: str, group: str) -> str:
        return text.replace(GROUP_PLACEHOLDER, group)

    template_in = (payload.get("prompt") or "") + " ".join(
        str(m.get("content", "")) for m in payload.get("messages") or []
    )
    if GROUP_PLACEHOLDER not in template_in:
        raise InputError("a fairness request needs a {group} slot in its prompt or messages")
    variants: list[dict[str, Any]] = []
    labels: list[str] = []
    for group in groups:
        for i in range(samples):
            params = dict(payload.get("params") or {})
            if params.get("seed") is not None:
                params["seed"] = int(params["seed"]) + i
            variant = {**payload, "params": params, "fairness": None}
            if payload.get("prompt") is not None:
                variant["prompt"] = fill(payload["prompt"], group)
            else:
                variant["messages"] = [
                    {**m, "content": fill(str(m["content"]), group)} for m in payload["messages"]
                ]
            variants.append(variant)
            labels.append(group)
    return variants, labels, dimension


def summarise(results: list[dict[str, Any]], groups: list[str], policy: LoadedPolicy) -> dict[str, Any]:
    """Per-group means, gaps, ratios and bootstrap intervals; the policy's gap threshold decides."""
    from fairlearn.metrics import MetricFrame

    cfg = policy.policy.fairness
    per_group: dict[str, dict[str, float]] = {}
    gaps: dict[str, dict[str, Any]] = {}
    for name, measure in MEASURES.items():
        values = [measure(r) for r in results]
        frame = MetricFrame(
            metrics=lambda _t, p: float(sum(p) / len(p)),
            y_true=values,
            y_pred=values,
            sensitive_features=groups,
        )
        by_group = {str(g): round(float(v), 6) for g, v in frame.by_group.items()}
        per_group[name] = by_group
        by_values: dict[str, list[float]] = {}
        for g, v in zip(groups, values, strict=True):
            by_values.setdefault(g, []).append(v)
        lo, hi = bootstrap_gap_ci(by_values, n_boot=cfg.bootstrap, seed=0)
        high = max(by_group.values())
        gaps[name] = {
            "gap": round(float(frame.difference()), 6),
            "ratio": round(float(frame.ratio()), 6) if high > 0 else 1.0,
            "ci": [round(lo, 6), round(hi, 6)],
            "highest": max(by_group, key=lambda g: by_group[g]),
            "lowest": min(by_group, key=lambda g: by_group[g]),
        }
    watched = gaps[cfg.metric]
    triggered = watched["gap"] > cfg.max_gap
    return {
        "metric": cfg.metric,
        "max_gap": cfg.max_gap,
        "triggered": triggered,
        "action": (cfg.action if triggered else Action.ALLOW).value,
        "per_group": per_group,
        "gaps": gaps,
        "n_per_group": {g: groups.count(g) for g in dict.fromkeys(groups)},
    }
