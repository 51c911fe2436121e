"""One calibration: plan the fields from the labelled data, score with the policy's checks, fit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from evaluators.calibration.errors import CalibrationError, LabelledDataError
from evaluators.calibration.fields import ThresholdField, fields_for, threshold_fields
from evaluators.calibration.fitting import Counts, Target, compare_scaling, counts_at, fit_threshold, held_out
from evaluators.calibration.labelled import MAX_PROBLEMS, STAGES, LabelledData, Stage
from evaluators.errors import Location, Problem
from evaluators.findings import Finding
from evaluators.policy import (
    CalibratedThreshold,
    Calibration,
    HeldOut,
    LoadedPolicy,
    ScoreScaling,
)


@dataclass(frozen=True)
class _Job:
    column: str
    field: ThresholdField
    rows: tuple[int, ...]
    """Indices into ``LabelledData.rows``."""


def _plan(loaded: LoadedPolicy, data: LabelledData, min_per_class: int) -> list[_Job]:
    policy = loaded.policy
    problems: list[Problem] = []
    jobs: list[_Job] = []

    def where(column: str) -> Location:
        return Location(data.file, 1, None, column)

    for column in data.columns:
        check, label = column.split(".", 1)
        for stage in STAGES:
            rows = tuple(i for i, r in enumerate(data.rows) if r.stage == stage and column in r.labels)
            if not rows:
                continue
            found = [(i, c) for i, c in enumerate(getattr(policy, stage)) if c.check == check and c.enabled]
            if not found:
                known = sorted({c.check for c in policy.checks(stage)})
                problems.append(
                    Problem(
                        where(column),
                        f"policy {policy.name!r} runs no {check!r} check on {stage} "
                        f"({len(rows)} rows labelled, first at line {data.rows[rows[0]].line}); "
                        f"its {stage} checks: {', '.join(known) or 'none'}",
                    )
                )
                continue
            index, config = found[0]
            fields = fields_for(config, stage, index, label)
            if not fields:
                known = sorted(threshold_fields(config, stage, index))
                problems.append(
                    Problem(
                        where(column),
                        f"check {check!r} on {stage} in policy {policy.name!r} has no label {label!r}; "
                        f"labels it can calibrate: {', '.join(known) or 'none'}",
                    )
                )
                continue
            labels = [data.rows[i].labels[column] for i in rows]
            positives = sum(labels)
            negatives = len(labels) - positives
            if positives < min_per_class or negatives < min_per_class:
                problems.append(
                    Problem(
                        where(column),
                        f"too few examples to fit on {stage}: {positives} positives and {negatives} "
                        f"negatives; at least {min_per_class} of each are needed",
                    )
                )
                continue
            jobs.extend(_Job(column, f, rows) for f in fields)
    seen: dict[str, str] = {}
    for job in jobs:
        other = seen.setdefault(job.field.dotted, job.column)
        if other != job.column:
            problems.append(Problem(where(job.column), f"{job.field.dotted} is also set by column {other!r}"))
    if problems:
        raise LabelledDataError(problems)
    return jobs


class ScoringEngine(Protocol):
    """What calibration needs of ``PolicyEngine``."""

    def evaluate(self, texts: Sequence[str], stage: Stage) -> Sequence[Any]:
        """One ``Decision`` (``findings``, ``errors``) per text."""
        ...


def scoring_policy(loaded: LoadedPolicy, checks: dict[Stage, set[str]]) -> LoadedPolicy:
    """``loaded`` with every check not in ``checks`` disabled, so only those models load and run.

    Disabled entries keep their place, so indices (and field paths) stay the same.
    """
    policy = loaded.policy
    update: dict[str, Any] = {}
    for stage in STAGES:
        keep = checks.get(stage, set())
        update[stage] = tuple(
            c if c.check in keep else c.model_copy(update={"enabled": False}) for c in getattr(policy, stage)
        )
    return replace(loaded, policy=policy.model_copy(update=update))


def _score(
    engine: ScoringEngine,
    data: LabelledData,
    jobs: list[_Job],
    batch_size: int,
    progress: Callable[[str], None] | None,
) -> _Scored:
    """Per field, the highest matching finding score per row (0 when none), and what the findings say."""
    scored = _Scored()
    problems: list[Problem] = []
    for stage in STAGES:
        stage_jobs = [j for j in jobs if j.field.stage == stage]
        if not stage_jobs:
            continue
        needed = sorted({i for j in stage_jobs for i in j.rows})
        best: dict[tuple[int, str], float] = {}
        for start in range(0, len(needed), batch_size):
            chunk = needed[start : start + batch_size]
            decisions = engine.evaluate([data.rows[i].text for i in chunk], stage)
            if len(decisions) != len(chunk):
                raise CalibrationError(
                    f"the engine returned {len(decisions)} decisions for {len(chunk)} texts"
                )
            for i, decision in zip(chunk, decisions, strict=True):
                for err in decision.errors:
                    problems.append(
                        Problem(
                            Location(data.file, data.rows[i].line, None, "text"),
                            f"check {err.check} could not score this text on {stage}: {err.error}",
                        )
                    )
                for job in stage_jobs:
                    f = job.field
                    for finding in decision.findings:
                        if (
                            finding.check != f.check
                            or finding.label != f.label
                            or not f.matches(finding.engine)
                        ):
                            continue
                        current = scored.thresholds.setdefault(
                            f.dotted, f.current if f.current is not None else finding.threshold
                        )
                        if finding.threshold != current:
                            raise CalibrationError(
                                f"{f.check}.{f.label} findings from engine {finding.engine} carry threshold "
                                f"{finding.threshold}, but {f.dotted} is {current}: cannot tell which "
                                "policy field sets it"
                            )
                        key = (i, f.dotted)
                        scored.engines.setdefault(f.dotted, finding.engine)
                        best[key] = max(best.get(key, 0.0), float(finding.score))
                    if f.fill is not None:
                        _observe_rules(scored, f, decision.findings)
            if progress is not None:
                progress(f"scored {min(start + batch_size, len(needed))}/{len(needed)} {stage} texts")
        for job in stage_jobs:
            f = job.field
            scored.scores[f.dotted] = np.array([best.get((i, f.dotted), 0.0) for i in job.rows])
            if f.current is None and f.dotted not in scored.thresholds:
                seen = sorted(scored.rules.get(f.dotted, {}))
                raise CalibrationError(
                    f"{f.check} on {stage} reported no {f.label!r} finding on any labelled text, so its "
                    f"threshold is unknown; labels it reported: {', '.join(seen) or 'none'}"
                )
    if problems:
        raise LabelledDataError(problems[:MAX_PROBLEMS])
    return scored


@dataclass
class _Scored:
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    engines: dict[str, str] = field(default_factory=dict)
    """Engine of the first finding per field."""
    thresholds: dict[str, float] = field(default_factory=dict)
    """Threshold in force per field, as the findings carry it."""
    rules: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """For fields with ``fill``: label -> {threshold, action} of every label the check reported."""


def _observe_rules(scored: _Scored, f: ThresholdField, findings: Sequence[Finding]) -> None:
    """Record the built-in rules a check applied; every text it classified must show the same set."""
    rules = {
        x.label: {"threshold": x.threshold, "action": x.action.value}
        for x in findings
        if x.check == f.check and f.matches(x.engine)
    }
    if not rules:
        return  # not classified (e.g. below escalate_above)
    before = scored.rules.setdefault(f.dotted, rules)
    if before != rules:
        raise CalibrationError(
            f"{f.check} on {f.stage} applied different label rules to different texts "
            f"({sorted(before)} vs {sorted(rules)}); list the labels in the policy to calibrate them"
        )


@dataclass(frozen=True)
class LabelResult:
    """One fitted threshold."""

    column: str
    field: ThresholdField
    n: int
    positives: int
    engine: str
    reached: bool
    before: Counts
    after: Counts
    held_out: HeldOut | None
    scaling: ScoreScaling | None
    fill_rules: dict[str, dict[str, Any]] | None = None
    """The check's built-in rules, written out when ``field.fill`` is null in the policy."""

    @property
    def changed(self) -> bool:
        return self.after.threshold != self.before.threshold

    def record(self) -> CalibratedThreshold:
        return CalibratedThreshold(
            field=self.field.dotted,
            stage=self.field.stage,
            check=self.field.check,
            label=self.field.label,
            engine=self.engine,
            n=self.n,
            positives=self.positives,
            reached=self.reached,
            before=self.before.point(),
            after=self.after.point(),
            held_out=self.held_out,
            scaling=self.scaling,
        )


@dataclass(frozen=True)
class CalibrationResult:
    policy: LoadedPolicy
    data: LabelledData
    target: Target
    labels: tuple[LabelResult, ...]
    created: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    @property
    def reached(self) -> bool:
        return all(r.reached for r in self.labels)

    def record(self) -> Calibration:
        return Calibration(
            target=str(self.target),
            data=Path(self.data.file).name,
            data_sha256=self.data.sha256,
            rows=len(self.data.rows),
            created=self.created,
            based_on_version=self.policy.policy.version,
            based_on_sha256=self.policy.sha256,
            thresholds=tuple(r.record() for r in self.labels),
        )


def calibrate(
    loaded: LoadedPolicy,
    data: LabelledData,
    target: Target,
    *,
    engine_factory: Callable[[LoadedPolicy], ScoringEngine] | None = None,
    min_per_class: int = 5,
    folds: int = 5,
    seed: int = 0,
    batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
) -> CalibrationResult:
    """Score ``data`` with ``loaded``'s checks and fit one threshold per labelled field.

    ``engine_factory`` builds the scoring engine from a policy in which only
    the checks being calibrated are enabled (default: ``PolicyEngine.build``,
    which loads their models). Data problems are raised before any model loads.
    """
    jobs = _plan(loaded, data, min_per_class)
    if engine_factory is None:
        from evaluators.engine import PolicyEngine

        engine_factory = PolicyEngine.build
    checks: dict[Stage, set[str]] = {}
    for job in jobs:
        checks.setdefault(job.field.stage, set()).add(job.field.check)
    engine = engine_factory(scoring_policy(loaded, checks))
    scored = _score(engine, data, jobs, batch_size, progress)
    results = []
    for job in jobs:
        dotted = job.field.dotted
        s = scored.scores[dotted]
        y = np.array([data.rows[i].labels[job.column] for i in job.rows], dtype=int)
        fit = fit_threshold(s, y, target)
        f = replace(job.field, current=scored.thresholds.get(dotted, job.field.current))
        assert f.current is not None  # _score raises when a threshold stays unknown
        before = counts_at(s, y, f.current)
        # An unreachable target keeps the previous threshold: a best effort is not what was asked.
        after = counts_at(s, y, fit.threshold) if fit.reached and fit.threshold is not None else before
        results.append(
            LabelResult(
                column=job.column,
                field=f,
                n=len(y),
                positives=int(y.sum()),
                # No finding at all (every score 0) leaves only the field's own engine, if it names one.
                engine=scored.engines.get(dotted) or f.engine or "none",
                reached=fit.reached,
                before=before,
                after=after,
                held_out=held_out(s, y, target, folds=folds, seed=seed),
                scaling=compare_scaling(s, y, folds=folds, seed=seed),
                fill_rules=scored.rules.get(dotted),
            )
        )
    return CalibrationResult(loaded, data, target, tuple(results))
