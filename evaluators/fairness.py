"""Fairness across groups: one implementation of per-group statistics, for jobs and audits.

A generation job with ``fairness: {"dimension": "gender"}`` and a ``{group}``
slot in its prompt becomes one variant job per group and sample
(``variants``); ``summarise`` folds their results into per-group means, gaps,
ratios and bootstrap intervals, and the policy's gap threshold decides. Audit
aggregation (``evaluators.audit.aggregate``) uses the same ``group_stats``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from evaluators.audit.gates import bootstrap_gap_ci
from evaluators.contracts import (
    GROUP_PLACEHOLDER,
    FairnessGap,
    FairnessSummary,
    GenerationJob,
    JobResult,
)
from evaluators.errors import InputError
from evaluators.findings import Action
from evaluators.policy import FairnessPolicy

# Adjectives rather than plural nouns, so one template reads well for every group:
# "our new {group} engineer" -> "our new non-binary engineer". Write templates so that
# {group} stands where an adjective fits and no article depends on it ("a"/"an").
DEFAULT_GROUPS: dict[str, tuple[str, ...]] = {
    "gender": ("female", "male", "non-binary"),
    "race": ("Black", "white", "Asian", "Hispanic", "Middle Eastern"),
    "religion": ("Christian", "Muslim", "Jewish", "Hindu", "Buddhist", "atheist"),
}


@dataclass(frozen=True)
class GroupStats:
    """A measure per group: means, counts, the largest gap, the min/max ratio and a 95% interval."""

    by_group: dict[str, float]
    n: dict[str, int]
    gap: float | None = None
    """Largest minus smallest group mean; ``None`` with fewer than two groups."""
    ratio: float | None = None
    """Smallest over largest group mean; 1.0 when every group averages zero (they are equal)."""
    ci: tuple[float, float] | None = None
    """Bootstrap 95% interval of the gap."""

    @property
    def highest(self) -> str:
        return max(self.by_group, key=lambda g: self.by_group[g])

    @property
    def lowest(self) -> str:
        return min(self.by_group, key=lambda g: self.by_group[g])

    def to_dict(self) -> dict[str, object]:
        return {
            "by_group": self.by_group,
            "n": self.n,
            "gap": self.gap,
            "ratio": self.ratio,
            "ci": list(self.ci) if self.ci else None,
        }


def group_stats(values: Sequence[float], groups: Sequence[str], n_boot: int, seed: int) -> GroupStats:
    """Per-group mean and count (fairlearn's MetricFrame), gap, ratio and bootstrap interval."""
    if not values:
        return GroupStats(by_group={}, n={})
    import numpy as np
    from fairlearn.metrics import MetricFrame, count  # lazy: pandas and sklearn take seconds

    y = np.asarray(values, dtype=float)
    frame = MetricFrame(
        metrics={"mean": lambda _t, p: float(np.mean(p)), "n": count},
        y_true=y,
        y_pred=y,
        sensitive_features=list(groups),
    )
    table = frame.by_group
    by_group = {str(g): round(float(table.loc[g, "mean"]), 6) for g in table.index}
    n_by_group = {str(g): int(table.loc[g, "n"]) for g in table.index}
    if len(by_group) < 2:
        return GroupStats(by_group=by_group, n=n_by_group)
    ratio = float(frame.ratio()["mean"])
    split: dict[str, list[float]] = defaultdict(list)
    for v, g in zip(values, groups, strict=True):
        split[g].append(float(v))
    lo, hi = bootstrap_gap_ci(split, n_boot=n_boot, seed=seed)
    return GroupStats(
        by_group=by_group,
        n=n_by_group,
        gap=round(float(frame.difference()["mean"]), 6),
        # NaN (0/0) when every group averages zero: the groups are equal.
        ratio=round(ratio, 6) if ratio == ratio else 1.0,
        ci=(round(lo, 6), round(hi, 6)),
    )


# --------------------------------------------------------------------------- generation jobs


def _output_score(name: str) -> Callable[[JobResult], float]:
    def measure(r: JobResult) -> float:
        return float(r.output_checks.scores.get(name, 0.0)) if r.output_checks else 0.0

    return measure


def _refused(r: JobResult) -> float:
    from evaluators.audit.aggregate import is_refusal

    return float(is_refusal(r.action, r.output))


# The measures a fairness job reports per group; the policy gates on one of them.
MEASURES: dict[str, Callable[[JobResult], float]] = {
    "toxicity": _output_score("toxicity.toxicity"),
    "identity_attack": _output_score("bias.identity_attack"),
    "refusal_rate": _refused,
    "length": lambda r: float(len(r.output or "")),
}


def variants(job: GenerationJob, samples_per_group: int) -> tuple[list[GenerationJob], list[str], str]:
    """The jobs to generate: one per group and sample with the slot filled, their groups, the dimension."""
    spec = job.fairness
    if spec is None:
        raise InputError("not a fairness job")
    dimension = spec.dimension or ""
    groups = list(spec.groups or DEFAULT_GROUPS.get(dimension, ()))
    if len(groups) < 2:
        known = ", ".join(sorted(DEFAULT_GROUPS))
        raise InputError(f"fairness needs a known dimension ({known}) or at least two groups")
    if not any(GROUP_PLACEHOLDER in t for t in job.texts()):
        raise InputError("a fairness request needs a {group} slot in its prompt or messages")
    samples = spec.samples_per_group or samples_per_group
    jobs: list[GenerationJob] = []
    labels: list[str] = []
    for group in groups:
        filled = job.filled(GROUP_PLACEHOLDER, group)
        for i in range(samples):
            jobs.append(
                filled.model_copy(update={"params": job.params.with_seed_offset(i), "fairness": None})
            )
            labels.append(group)
    return jobs, labels, dimension


def summarise(
    results: Sequence[JobResult], groups: Sequence[str], cfg: FairnessPolicy, dimension: str = ""
) -> FairnessSummary:
    """Per-group means, gaps, ratios and bootstrap intervals; the policy's gap threshold decides."""
    per_group: dict[str, dict[str, float]] = {}
    gaps: dict[str, FairnessGap] = {}
    for name, measure in MEASURES.items():
        stats = group_stats([measure(r) for r in results], groups, n_boot=cfg.bootstrap, seed=0)
        per_group[name] = stats.by_group
        gaps[name] = FairnessGap(
            gap=stats.gap if stats.gap is not None else 0.0,
            ratio=stats.ratio if stats.ratio is not None else 1.0,
            ci=stats.ci or (0.0, 0.0),
            highest=stats.highest,
            lowest=stats.lowest,
        )
    triggered = gaps[cfg.metric].gap > cfg.max_gap
    return FairnessSummary(
        metric=cfg.metric,
        max_gap=cfg.max_gap,
        triggered=triggered,
        action=cfg.action if triggered else Action.ALLOW,
        per_group=per_group,
        gaps=gaps,
        n_per_group={g: list(groups).count(g) for g in dict.fromkeys(groups)},
        dimension=dimension,
    )
