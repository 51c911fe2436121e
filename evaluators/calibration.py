"""Fit a policy's thresholds on labelled examples and write a new policy version.

``assay calibrate`` reads a CSV of texts with 0/1 labels per ``check.label``,
scores the texts with the policy's own checks (through ``PolicyEngine``, so
scores match production), fits each label's threshold to a target
(``precision>=P``, ``recall>=R``, ``f1`` or ``fbeta=B``) and writes a new
policy file: the original YAML text with only the threshold values, the
version and a ``calibration:`` record changed, so comments survive. The
written file is validated with the normal loader and compared with the
intended policy before anything is reported as done.

Platt and isotonic scaling are measured (held-out Brier score and log-loss)
and reported, not applied: a monotone map does not change which texts a
threshold selects, and findings keep the checks' raw scores.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import yaml

from evaluators.errors import AssayError, FileValidationError, Location, PolicyError, Problem
from evaluators.findings import Finding
from evaluators.policy import (
    CalibratedThreshold,
    Calibration,
    HeldOut,
    LoadedPolicy,
    OperatingPoint,
    ScoreScaling,
    parse_policy,
)

Stage = Literal["input", "output"]
STAGES: tuple[Stage, ...] = ("input", "output")
Z95 = 1.959963984540054
RESERVED_COLUMNS = ("text", "stage", "id")
# Engine of the toxicity check's lexical tier; it reports label "toxicity" beside the classifier's.
PROFANITY_ENGINE = "alt-profanity-check"
LOG_LOSS_EPS = 1e-6
CALIBRATION_HEADER = "# Written by `assay calibrate`"


class CalibrationError(AssayError):
    """Calibration cannot go on: unreachable data, a check that failed, an edit that did not hold."""

    code = "calibration-error"
    title = "Calibration failed"


class LabelledDataError(FileValidationError):
    """The labelled CSV is broken or does not fit the policy; names file, line and column."""

    code = "invalid-labelled-data"
    title = "Invalid labelled data"


# --- targets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a fitted threshold aims for.

    ``precision``/``recall``: the minimum to reach, then the best other metric.
    ``fbeta``: the F-beta score to maximise (``value`` is beta; f1 is beta 1).
    """

    metric: Literal["precision", "recall", "fbeta"]
    value: float

    def __str__(self) -> str:
        if self.metric == "fbeta":
            return "f1" if self.value == 1 else f"fbeta={self.value:g}"
        return f"{self.metric}>={self.value:g}"


def parse_target(text: str) -> Target:
    """``precision=0.9`` (or ``>=``), ``recall=0.8``, ``f1`` or ``fbeta=0.5``."""
    spec = text.strip().lower().replace(" ", "")
    if spec == "f1":
        return Target("fbeta", 1.0)
    m = re.fullmatch(r"(precision|recall|fbeta)>?=([0-9]*\.?[0-9]+)", spec)
    if not m:
        raise CalibrationError(
            f"target {text!r} not understood; use precision=P, recall=R (0 < P, R <= 1), f1 or fbeta=B"
        )
    metric, value = m.group(1), float(m.group(2))
    if metric == "fbeta":
        if not 0 < value <= 100:
            raise CalibrationError(f"target {text!r}: beta must be above 0")
        return Target("fbeta", value)
    if not 0 < value <= 1:
        raise CalibrationError(f"target {text!r}: {metric} must be above 0 and at most 1")
    return Target("precision" if metric == "precision" else "recall", value)


# --- counting and intervals --------------------------------------------------------------------


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion; None when there are no trials."""
    if trials <= 0:
        return None
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # The bounds are exactly 0 and 1 at the extremes; floating point lands a hair inside.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return (low, high)


@dataclass(frozen=True)
class Counts:
    """What one threshold selects among labelled examples."""

    threshold: float
    selected: int
    true_positives: int
    positives: int
    n: int

    @property
    def precision(self) -> float | None:
        return self.true_positives / self.selected if self.selected else None

    @property
    def recall(self) -> float:
        return self.true_positives / self.positives if self.positives else 0.0

    def point(self) -> OperatingPoint:
        p_ci = wilson(self.true_positives, self.selected)
        r_ci = wilson(self.true_positives, self.positives) or (0.0, 1.0)
        return OperatingPoint(
            threshold=self.threshold,
            selected=self.selected,
            true_positives=self.true_positives,
            precision=_r(self.precision),
            precision_ci=_ri(p_ci),
            recall=round(self.recall, 4),
            recall_ci=(round(r_ci[0], 4), round(r_ci[1], 4)),
        )


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _ri(ci: tuple[float, float] | None) -> tuple[float, float] | None:
    return None if ci is None else (round(ci[0], 4), round(ci[1], 4))


def counts_at(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, threshold: float
) -> Counts:
    """Counts at ``threshold``, with the checks' rule: a score at or above it triggers."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=int)
    sel = s >= threshold
    return Counts(
        threshold=threshold,
        selected=int(sel.sum()),
        true_positives=int((sel & (y == 1)).sum()),
        positives=int((y == 1).sum()),
        n=len(y),
    )


@dataclass(frozen=True)
class Fit:
    """A fitted threshold; ``threshold`` is None when no threshold selects any example."""

    threshold: float | None
    reached: bool


def _place(lower: float, upper: float) -> float:
    """A short decimal in ``(lower, upper]``, near the middle of the gap.

    Any value in the gap selects the same examples; the middle leaves the most
    margin on both sides, and a short number reads better in a policy.
    """
    mid = (lower + upper) / 2
    for digits in range(1, 9):
        r = round(mid, digits)
        if lower < r <= upper:
            return r
    return upper


def fit_threshold(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, target: Target
) -> Fit:
    """The threshold that meets ``target`` with the best other metric.

    precision>=P: highest recall among thresholds with precision >= P (then
    higher precision, then fewer texts selected). recall>=R: highest precision
    among thresholds with recall >= R (then higher recall). fbeta: highest
    F-beta (then higher precision). Candidates are the distinct positive
    scores; a text with score 0 has no finding in production, so a threshold
    that would select it is never offered. When the target cannot be met the
    fit is the best effort for its metric and ``reached`` is False.
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=int)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError("scores and labels must be 1-d and of the same length")
    positives = int(y.sum())
    if positives == 0:
        raise CalibrationError("cannot fit a threshold without positive examples")
    distinct = np.unique(s)[::-1]  # descending
    candidates = distinct[distinct > 0]
    if len(candidates) == 0:
        return Fit(None, False)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last = np.searchsorted(-s_sorted, -candidates, side="right") - 1
    tp = np.cumsum(y_sorted)[last].astype(float)
    selected = (last + 1).astype(float)
    precision = tp / selected
    recall = tp / positives
    height = candidates  # higher threshold: fewer texts selected
    if target.metric == "precision":
        ok = precision >= target.value - 1e-12
        keys = (height, precision, recall) if ok.any() else (height, recall, precision)
    elif target.metric == "recall":
        ok = recall >= target.value - 1e-12
        keys = (height, recall, precision) if ok.any() else (height, precision, recall)
    else:
        b2 = target.value**2
        denom = b2 * precision + recall
        f = np.where(denom > 0, (1 + b2) * precision * recall / np.where(denom > 0, denom, 1), 0.0)
        ok = f > 0
        keys = (height, precision, f)
    pool = np.flatnonzero(ok) if ok.any() else np.arange(len(candidates))
    # lexsort sorts by the last key first; take the best of the pool.
    best = pool[np.lexsort(tuple(k[pool] for k in keys))[-1]]
    upper = float(candidates[best])
    below = distinct[distinct < upper]
    lower = float(below[0]) if len(below) else 0.0
    return Fit(_place(max(lower, 0.0), upper), bool(ok.any()))


def _folds(labels: np.ndarray, folds: int) -> int:
    positives = int(labels.sum())
    return min(folds, positives, len(labels) - positives)


def held_out(
    scores: np.ndarray, labels: np.ndarray, target: Target, *, folds: int = 5, seed: int = 0
) -> HeldOut | None:
    """Cross-validated precision and recall of the fitting procedure itself.

    The in-sample operating point is optimistic (the threshold was chosen on
    those very examples); this fits on k-1 stratified folds, measures on the
    fold left out and pools the counts.
    """
    from sklearn.model_selection import StratifiedKFold

    k = _folds(labels, folds)
    if k < 2:
        return None
    tp = sel = 0
    for train, test in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(scores, labels):
        fit = fit_threshold(scores[train], labels[train], target)
        if fit.threshold is None:
            continue
        c = counts_at(scores[test], labels[test], fit.threshold)
        tp += c.true_positives
        sel += c.selected
    positives = int(labels.sum())
    r_ci = wilson(tp, positives) or (0.0, 1.0)
    return HeldOut(
        folds=k,
        precision=_r(tp / sel) if sel else None,
        precision_ci=_ri(wilson(tp, sel)),
        recall=round(tp / positives, 4),
        recall_ci=(round(r_ci[0], 4), round(r_ci[1], 4)),
    )


def compare_scaling(
    scores: np.ndarray, labels: np.ndarray, *, folds: int = 5, seed: int = 0
) -> ScoreScaling | None:
    """Held-out Brier score and log-loss of raw, Platt-scaled and isotonic scores.

    Platt scaling is a logistic regression on the score's logit; isotonic is
    scikit-learn's ``IsotonicRegression``. Both are fitted on k-1 folds and
    scored on the fold left out. Probabilities are clipped to [1e-6, 1 - 1e-6]
    for the log-loss.
    """
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    k = _folds(labels, folds)
    if k < 2:
        return None
    raw = np.clip(scores, 0.0, 1.0)
    logit = np.log(np.clip(raw, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS) / np.clip(1 - raw, LOG_LOSS_EPS, 1))
    preds: dict[Literal["raw", "platt", "isotonic"], np.ndarray] = {
        "raw": raw,
        "platt": np.zeros_like(raw),
        "isotonic": np.zeros_like(raw),
    }
    for train, test in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(raw, labels):
        platt = LogisticRegression(C=1e4).fit(logit[train, None], labels[train])
        preds["platt"][test] = platt.predict_proba(logit[test, None])[:, 1]
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw[train], labels[train])
        preds["isotonic"][test] = iso.predict(raw[test])
    brier = {m: round(float(np.mean((p - labels) ** 2)), 4) for m, p in preds.items()}
    losses = {}
    for m, p in preds.items():
        q = np.clip(p, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
        losses[m] = round(float(-np.mean(labels * np.log(q) + (1 - labels) * np.log(1 - q))), 4)
    best = min(brier, key=lambda m: (brier[m], m != "raw"))  # a tie keeps the raw scores
    return ScoreScaling(brier=brier, log_loss=losses, best=best)


# --- labelled data -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledRow:
    line: int
    text: str
    stage: Stage
    labels: dict[str, int]
    """Column -> 0 or 1; empty cells (not labelled for that column) are left out."""


@dataclass(frozen=True)
class LabelledData:
    file: str
    sha256: str
    columns: tuple[str, ...]
    """The label columns (``check.label``), in file order."""
    rows: tuple[LabelledRow, ...]


MAX_PROBLEMS = 20


def read_labelled_csv(path: Path) -> LabelledData:
    """Read and check a labelled CSV; every problem names file, line and column.

    Columns: ``text`` (required), ``stage`` (input or output; default output),
    ``id`` (ignored), and one or more ``check.label`` columns of 0 or 1. An
    empty label cell means "not labelled for this column".
    """
    file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LabelledDataError([Problem(Location(file), f"cannot read: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelledDataError([Problem(Location(file), f"not UTF-8: {exc}")]) from None
    reader = csv.reader(text.splitlines(keepends=True))
    problems: list[Problem] = []
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise LabelledDataError([Problem(Location(file), "empty file: expected a header row")]) from None
    except csv.Error as exc:
        raise LabelledDataError([Problem(Location(file, 1), f"bad CSV: {exc}")]) from None

    def col(name: str) -> int | None:
        return header.index(name) + 1 if name in header else None

    for i, name in enumerate(header, start=1):
        if header.count(name) > 1 and header.index(name) + 1 == i:
            problems.append(Problem(Location(file, 1, i, name or None), f"column {name!r} appears twice"))
        elif name not in RESERVED_COLUMNS and not re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_.-]+", name):
            problems.append(
                Problem(
                    Location(file, 1, i, name or None),
                    f"column {name!r} is not a label: label columns are named check.label "
                    "(e.g. toxicity.insult, pii.PERSON); other columns allowed: "
                    + ", ".join(RESERVED_COLUMNS),
                )
            )
    if col("text") is None:
        problems.append(Problem(Location(file, 1, None, "text"), "missing column 'text'"))
    columns = tuple(h for h in header if h not in RESERVED_COLUMNS)
    if not columns:
        problems.append(
            Problem(Location(file, 1), "no label columns: add one or more check.label columns of 0/1")
        )
    if problems:
        raise LabelledDataError(problems)

    rows: list[LabelledRow] = []
    try:
        for record in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in record):
                continue  # blank line
            if len(record) != len(header):
                problems.append(
                    Problem(Location(file, line), f"{len(record)} cells, but the header has {len(header)}")
                )
                continue
            cells = dict(zip(header, record, strict=True))
            stage = cells.get("stage", "").strip() or "output"
            if stage not in STAGES:
                problems.append(
                    Problem(
                        Location(file, line, col("stage"), "stage"),
                        f"stage {stage!r} is not input or output",
                    )
                )
            labels: dict[str, int] = {}
            for name in columns:
                value = cells[name].strip()
                if value == "":
                    continue
                if value not in ("0", "1"):
                    problems.append(
                        Problem(Location(file, line, col(name), name), f"label {value!r} is not 0 or 1")
                    )
                    continue
                labels[name] = int(value)
            if not labels:
                problems.append(Problem(Location(file, line), "no label in this row"))
            rows.append(LabelledRow(line, cells["text"], "input" if stage == "input" else "output", labels))
            if len(problems) >= MAX_PROBLEMS:
                break
    except csv.Error as exc:
        problems.append(Problem(Location(file, reader.line_num), f"bad CSV: {exc}"))
    if not rows and not problems:
        problems.append(Problem(Location(file, 2), "no data rows"))
    if problems:
        raise LabelledDataError(problems)
    return LabelledData(file, hashlib.sha256(raw).hexdigest(), columns, tuple(rows))


# --- which policy field sets which threshold ---------------------------------------------------


@dataclass(frozen=True)
class ThresholdField:
    """One threshold in a policy and the findings it applies to."""

    stage: Stage
    index: int
    """Position of the check in the stage's list."""
    check: str
    label: str
    path: tuple[str, ...]
    """Path inside the check's config, e.g. ``("profanity", "threshold")``."""
    current: float | None
    """The threshold in force; None until scoring when the check takes it from its model."""
    engine: str | None = None
    """Only findings from this engine; None: any engine except ``not_engine``."""
    not_engine: str | None = None
    fill: tuple[str, ...] | None = None
    """A container that is null in the policy (the check's built-in rules apply); writing the
    threshold writes out those rules, as the findings carry them, into it."""

    @property
    def dotted(self) -> str:
        return ".".join([self.stage, str(self.index), *self.path])

    def matches(self, engine: str) -> bool:
        if self.engine is not None:
            return engine == self.engine
        return engine != self.not_engine


def threshold_fields(config: Any, stage: Stage, index: int) -> dict[str, list[ThresholdField]]:
    """The thresholds one check config exposes, by the label its findings carry.

    The toxicity check's lexical tier reports label ``toxicity`` from its own
    threshold (``profanity.threshold``); its classifier tier and other checks
    keep a rule per label in ``labels`` or ``entities``. Written against the
    configs' field names so that a new label needs no change here.
    """
    out: dict[str, list[ThresholdField]] = {}

    def add(
        label: str,
        path: tuple[str, ...],
        current: float,
        engine: str | None = None,
        not_engine: str | None = None,
    ) -> None:
        found = ThresholdField(stage, index, config.check, label, path, float(current), engine, not_engine)
        out.setdefault(label, []).append(found)

    profanity = getattr(config, "profanity", None) if config.check == "toxicity" else None
    lexical = profanity is not None and bool(profanity.enabled)
    if profanity is not None and lexical:
        add("toxicity", ("profanity", "threshold"), profanity.threshold, engine=PROFANITY_ENGINE)
    classifier = config.check != "toxicity" or getattr(config, "detoxify", None) is not None
    for container in ("labels", "entities"):
        rules = getattr(config, container, None)
        if classifier and isinstance(rules, dict):
            for label, rule in rules.items():
                if lexical:
                    add(label, (container, label, "threshold"), rule.threshold, not_engine=PROFANITY_ENGINE)
                else:
                    add(label, (container, label, "threshold"), rule.threshold)
    if config.check == "bias":
        add("identity_attack", ("identity_attack_threshold",), config.identity_attack_threshold)
        add("counterfactual_gap", ("counterfactual_threshold",), config.counterfactual_threshold)
    if config.check == "hallucination":
        add("unsupported_claim", ("threshold",), config.threshold)
    return out


def fields_for(config: Any, stage: Stage, index: int, label: str) -> list[ThresholdField]:
    """The thresholds that ``label``'s findings from this check are compared with (empty: none).

    A toxicity classifier tier with ``labels: null`` reports every label its
    checkpoint scores under built-in rules, known only once the model loads:
    any label is accepted here, and its threshold comes from the findings.
    """
    known = threshold_fields(config, stage, index).get(label, [])
    open_rules = config.check == "toxicity" and getattr(config, "detoxify", None) is not None
    if open_rules and getattr(config, "labels", ...) is None:
        profanity = getattr(config, "profanity", None)
        lexical = profanity is not None and bool(profanity.enabled)
        known = [
            *known,
            ThresholdField(
                stage,
                index,
                config.check,
                label,
                ("labels", label, "threshold"),
                None,
                not_engine=PROFANITY_ENGINE if lexical else None,
                fill=("labels",),
            ),
        ]
    return known


# --- planning, scoring, fitting ----------------------------------------------------------------


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


# --- writing the new policy version ------------------------------------------------------------


def next_version(version: str) -> str:
    """``1.0.0`` -> ``1.0.0+cal1``; ``1.0.0+cal1`` -> ``1.0.0+cal2``.

    A build-metadata suffix keeps the version people manage and marks the file
    as derived from it; a second calibration of a calibrated file counts up.
    """
    m = re.fullmatch(r"(.*)\+cal(\d+)", version)
    return f"{m.group(1)}+cal{int(m.group(2)) + 1}" if m else f"{version}+cal1"


def default_output(path: Path) -> Path:
    return path.with_name(f"{path.stem}-calibrated{path.suffix or '.yaml'}")


@dataclass(frozen=True)
class _Edit:
    start: int
    end: int
    text: str


class _FlowListDumper(yaml.SafeDumper):
    """Short lists of scalars (intervals) in flow style; everything else in block style."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(not isinstance(x, dict | list) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_FlowListDumper.add_representer(list, _represent_list)


def _flow(value: Any) -> str:
    """``value`` as one line of YAML (a flow mapping for dicts)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float | int):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    dumped = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 20)
    return dumped.strip()


def _child(node: yaml.Node, key: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                return k, v
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        return node.value[key], node.value[key]
    return None


def _line_start(text: str, index: int) -> int:
    return text.rfind("\n", 0, index) + 1


def _insert_key(text: str, mapping: yaml.MappingNode, key: str, value: Any) -> _Edit:
    """Add ``key: value`` to a mapping in the text, in the mapping's own style."""
    entry = f"{key}: {_flow(value)}"
    if mapping.flow_style:
        at = mapping.start_mark.index + 1  # just after "{"
        return _Edit(at, at, entry + (", " if mapping.value else ""))
    if not mapping.value:
        raise CalibrationError(
            f"cannot add {key!r} to an empty block mapping at line {mapping.start_mark.line + 1}"
        )
    indent = mapping.value[0][0].start_mark.column
    if isinstance(value, dict) and value:
        # A nested block reads better than one long flow line; each entry stays on one line.
        pad = " " * (indent + 2)
        entry = f"{key}:\n" + "\n".join(f"{pad}{k}: {_flow(v)}" for k, v in value.items())
    end = mapping.value[-1][1].end_mark.index
    start = _line_start(text, end)
    if text[start:end].strip() == "":
        # The last value ends where the next line's token begins (nested block): insert before that line.
        at = start
    else:
        newline = text.find("\n", end)
        if newline < 0:
            return _Edit(len(text), len(text), "\n" + " " * indent + entry + "\n")
        at = newline + 1
    return _Edit(at, at, " " * indent + entry + "\n")


def _set_at(text: str, root: yaml.Node, path: Sequence[str | int], intended: Any) -> _Edit:
    """The edit that gives ``path`` its value in ``intended`` (the whole intended policy, as JSON)."""
    node = root
    for depth, part in enumerate(path):
        found = _child(node, part)
        if found is None:
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                return _insert_key(text, node, part, _get(intended, path[: depth + 1]))
            raise CalibrationError(f"cannot find {'.'.join(map(str, path))} in the policy text to edit")
        node = found[1]
        if depth < len(path) - 1 and isinstance(node, yaml.ScalarNode):
            if node.tag != "tag:yaml.org,2002:null":
                raise CalibrationError(f"{'.'.join(map(str, path[: depth + 1]))} is not a mapping")
            # An explicit null container (``labels: null`` or ``labels:``) becomes the intended mapping.
            value = _flow(_get(intended, path[: depth + 1]))
            empty = node.start_mark.index == node.end_mark.index
            return _Edit(node.start_mark.index, node.end_mark.index, (" " if empty else "") + value)
    if not isinstance(node, yaml.ScalarNode):
        raise CalibrationError(f"{'.'.join(map(str, path))} is not a scalar in the policy text")
    return _Edit(node.start_mark.index, node.end_mark.index, _flow(_get(intended, path)))


def _get(data: Any, path: Sequence[str | int]) -> Any:
    for part in path:
        data = data[part]
    return data


def _set(data: Any, path: Sequence[str | int], value: Any) -> None:
    _get(data, path[:-1])[path[-1]] = value


def _calibration_block(record: Calibration, target: Target) -> str:
    body = yaml.dump(
        {"calibration": record.model_dump(mode="json")},
        Dumper=_FlowListDumper,
        sort_keys=False,
        default_flow_style=False,
        width=100,
        allow_unicode=True,
    )
    return (
        f"{CALIBRATION_HEADER} (target {target}): the thresholds listed here were fitted on\n"
        "# the labelled data named below; before/after are measured on those same examples, held_out by\n"
        "# cross-validation. Editing a listed threshold by hand makes this record stale (a policy error).\n"
        + body
    )


def render_calibrated(result: CalibrationResult, out: Path, *, version: str | None = None) -> str:
    """The new policy text: the original with thresholds, version and calibration record edited.

    Raises ``CalibrationError`` when the edited text does not validate or does
    not load as exactly the intended policy.
    """
    loaded = result.policy
    text = loaded.path.read_text(encoding="utf-8")
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != loaded.sha256:
        raise CalibrationError(f"{loaded.path} changed while calibrating; run again")
    new_version = version or next_version(loaded.policy.version)
    if len(new_version) > 32:
        raise CalibrationError(f"version {new_version!r} is longer than 32 characters; pass --version")
    record = result.record()
    intended = loaded.policy.model_dump(mode="json")
    for r in result.labels:
        base = [r.field.stage, r.field.index]
        if r.changed and r.field.fill and _get(intended, [*base, *r.field.fill]) is None:
            if not r.fill_rules:
                raise CalibrationError(f"internal error: no observed rules to write for {r.field.dotted}")
            _set(intended, [*base, *r.field.fill], json.loads(json.dumps(r.fill_rules)))
        if r.changed:
            _set(intended, [*base, *r.field.path], r.after.threshold)
    intended["version"] = new_version
    intended["calibration"] = record.model_dump(mode="json")

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode) or root.flow_style:
        raise CalibrationError(f"{loaded.path}: only a block-style top-level mapping can be edited in place")
    edits = [
        _set_at(text, root, [r.field.stage, r.field.index, *r.field.path], intended)
        for r in result.labels
        if r.changed
    ]
    edits.append(_set_at(text, root, ["version"], intended))
    block = _calibration_block(record, result.target)
    existing = _child(root, "calibration")
    if existing is not None:
        key, value = existing
        end = value.end_mark.index
        # A block value ends where the next token begins; keep that line's indentation.
        end = _line_start(text, end) if text[_line_start(text, end) : end].strip() == "" else end
        start = key.start_mark.index
        # Replace our own header comment too, so it names the new target.
        header = text.rfind(CALIBRATION_HEADER, 0, start)
        if header >= 0 and text[header:start].count("\n") == 3:
            start = header
        edits.append(_Edit(start, end, block))
    else:
        edits.append(_Edit(len(text), len(text), ("\n" if text.endswith("\n") else "\n\n") + block))
    # Two labels filling one null container make the same edit; keep it once. Inserts at one
    # position keep the order they were made in (mapping keys before the calibration block).
    unique = list(dict.fromkeys(edits))
    ordered = sorted(enumerate(unique), key=lambda pair: (pair[1].start, pair[1].end, pair[0]))
    for (_, a), (_, b) in itertools.pairwise(ordered):
        if a.end > b.start:
            raise CalibrationError("internal error: overlapping edits of the policy text")
    new_text = text
    for _, e in reversed(ordered):
        new_text = new_text[: e.start] + e.text + new_text[e.end :]

    try:
        written = parse_policy(new_text, str(out))
    except PolicyError as exc:
        raise CalibrationError(
            "internal error: the calibrated policy does not validate:\n" + "\n".join(map(str, exc.problems))
        ) from exc
    actual = written.policy.model_dump(mode="json")
    if actual != intended:
        diff = _first_difference(intended, actual)
        raise CalibrationError(
            f"internal error: the edited policy text does not load as intended (at {diff}); "
            "the file uses YAML the editor does not handle (anchors?)"
        )
    return new_text


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}.{i}")
    return path or "top level"


def write_calibrated(
    result: CalibrationResult, out: Path, *, version: str | None = None, overwrite: bool = False
) -> LoadedPolicy:
    """Write the new policy version to ``out`` and load it back with the normal loader."""
    from evaluators.policy import load_policy_file

    if out.resolve() == result.policy.path.resolve():
        raise CalibrationError(f"{out} is the policy being calibrated; write the new version elsewhere")
    if out.exists() and not overwrite:
        raise CalibrationError(f"{out} exists; pass --force to overwrite it")
    text = render_calibrated(result, out, version=version)
    out.write_text(text, encoding="utf-8")
    return load_policy_file(out)


# --- reporting ---------------------------------------------------------------------------------


def _pct(x: float | None, ci: tuple[float, float] | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{x:.2f}"


def format_table(result: CalibrationResult) -> str:
    """A fixed-width table: per label, the previous and fitted operating points and the held-out one."""
    head = ("label", "field", "engine", "n", "pos", "", "threshold", "precision [95% CI]", "recall [95% CI]")
    rows: list[tuple[str, ...]] = [head]
    notes: list[str] = []
    for r in result.labels:
        b, a = r.before.point(), r.after.point()
        ident = (r.column, r.field.dotted, r.engine, str(r.n), str(r.positives))
        blank = ("",) * len(ident)
        rows.append(
            (
                *ident,
                "before",
                f"{b.threshold:g}",
                _pct(b.precision, b.precision_ci),
                _pct(b.recall, b.recall_ci),
            )
        )
        mark = "after" if r.reached else "after*"
        rows.append(
            (*blank, mark, f"{a.threshold:g}", _pct(a.precision, a.precision_ci), _pct(a.recall, a.recall_ci))
        )
        if r.held_out is not None:
            h = r.held_out
            rows.append(
                (
                    *blank,
                    f"{h.folds}-fold",
                    "refit",
                    _pct(h.precision, h.precision_ci),
                    _pct(h.recall, h.recall_ci),
                )
            )
        if not r.reached:
            notes.append(
                f"* {r.column} ({r.field.dotted}): target {result.target} not reachable; kept {b.threshold:g}"
            )
        if r.scaling is not None:
            s = r.scaling
            verdict = (
                f"{s.best} would lower the held-out Brier score from {s.brier['raw']:.3f} "
                f"to {s.brier[s.best]:.3f}"
                if s.best != "raw"
                else f"raw scores are already best (Brier {s.brier['raw']:.3f})"
            )
            notes.append(
                f"scaling {r.column} ({r.field.dotted}): {verdict}; Brier raw/Platt/isotonic "
                f"{s.brier['raw']:.3f}/{s.brier['platt']:.3f}/{s.brier['isotonic']:.3f}, log-loss "
                f"{s.log_loss['raw']:.3f}/{s.log_loss['platt']:.3f}/{s.log_loss['isotonic']:.3f} "
                "(reported only: a monotone rescaling selects the same texts at the fitted threshold)"
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(
        [f"target {result.target}; {len(result.data.rows)} rows from {result.data.file}", *lines, *notes]
    )
