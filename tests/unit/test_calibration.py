"""Calibration: threshold fitting, intervals, labelled CSVs and the written policy version."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evaluators.calibration.errors import CalibrationError, LabelledDataError
from evaluators.calibration.fields import threshold_fields
from evaluators.calibration.fitting import (
    Target,
    compare_scaling,
    counts_at,
    fit_threshold,
    held_out,
    parse_target,
    wilson,
)
from evaluators.calibration.labelled import read_labelled_csv
from evaluators.calibration.report import format_table
from evaluators.calibration.rewrite import next_version, render_calibrated, write_calibrated
from evaluators.calibration.run import calibrate
from evaluators.checks.config import LabelRule
from evaluators.engine import Decision
from evaluators.errors import PolicyError
from evaluators.findings import Action, Finding
from evaluators.policy import LoadedPolicy, load_policy_file, parse_policy

ROOT = Path(__file__).resolve().parents[2]
PROFANITY = "alt-profanity-check"
CLASSIFIER = "detoxify:abuse-minilm"
BUILT_IN = {
    "hate": LabelRule(threshold=0.5, action=Action.BLOCK),
    "insult": LabelRule(threshold=0.5, action=Action.FLAG),
    "toxicity": LabelRule(threshold=0.5, action=Action.ALLOW),
}

# --- targets and intervals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "metric", "value", "shown"),
    [
        ("precision=0.9", "precision", 0.9, "precision>=0.9"),
        ("precision>=0.9", "precision", 0.9, "precision>=0.9"),
        ("recall=0.8", "recall", 0.8, "recall>=0.8"),
        ("f1", "fbeta", 1.0, "f1"),
        ("fbeta=0.5", "fbeta", 0.5, "fbeta=0.5"),
    ],
)
def test_parse_target(text: str, metric: str, value: float, shown: str) -> None:
    target = parse_target(text)
    assert (target.metric, target.value, str(target)) == (metric, value, shown)


@pytest.mark.parametrize("text", ["accuracy=0.9", "precision=1.5", "recall=0", "fbeta=0", "precision"])
def test_bad_target(text: str) -> None:
    with pytest.raises(CalibrationError, match="target"):
        parse_target(text)


def test_wilson_known_values() -> None:
    # Reference values from the closed form (Wilson 1927), z = 1.96.
    lo, hi = wilson(5, 10) or (0, 0)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = wilson(0, 10) or (0, 0)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    lo, hi = wilson(10, 10) or (0, 0)
    assert round(lo, 4) == 0.7225 and hi == 1.0
    assert wilson(0, 0) is None


# --- threshold fitting on synthetic scores -----------------------------------------------------

# Descending scores with labels; precision/recall at each cut:
# 0.95 1/1 r.2 | 0.9 2/2 r.4 | 0.85 2/3 | 0.8 3/4 r.6 | 0.7 4/5 r.8 | 0.6 4/6 | 0.5 4/7 | 0.4 5/8 r1
SCORES = [0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
LABELS = [1, 1, 0, 1, 1, 0, 0, 1, 0, 0]


@pytest.mark.parametrize(
    ("target", "gap", "precision", "recall"),
    [
        (Target("precision", 0.9), (0.85, 0.9), 1.0, 0.4),
        (Target("precision", 0.75), (0.6, 0.7), 0.8, 0.8),
        (Target("recall", 0.8), (0.6, 0.7), 0.8, 0.8),
        (Target("recall", 1.0), (0.3, 0.4), 0.625, 1.0),
        (Target("fbeta", 1.0), (0.6, 0.7), 0.8, 0.8),
        # beta 0.5 weighs precision: F0.5 is 0.77 at 0.9 and 0.80 at 0.7 (0.8/0.8).
        (Target("fbeta", 0.5), (0.6, 0.7), 0.8, 0.8),
        # beta 3 weighs recall: at 0.4, F3 = 10*0.625/(9*0.625+1) = 0.943 beats 0.8 at 0.7.
        (Target("fbeta", 3.0), (0.3, 0.4), 0.625, 1.0),
    ],
)
def test_fit_threshold_known_answers(
    target: Target, gap: tuple[float, float], precision: float, recall: float
) -> None:
    fit = fit_threshold(SCORES, LABELS, target)
    assert fit.reached and fit.threshold is not None
    assert gap[0] < fit.threshold <= gap[1], fit.threshold
    c = counts_at(SCORES, LABELS, fit.threshold)
    assert (c.precision, c.recall) == (precision, recall)


def test_threshold_sits_in_the_middle_of_the_gap_as_a_short_number() -> None:
    fit = fit_threshold([0.9, 0.8, 0.62, 0.4, 0.1], [1, 1, 1, 0, 0], Target("precision", 1.0))
    assert fit.threshold == 0.5  # the gap is (0.4, 0.62]


def test_unreachable_precision_is_reported() -> None:
    # Every negative outscores every positive.
    fit = fit_threshold([0.9, 0.8, 0.3, 0.2], [0, 0, 1, 1], Target("precision", 0.9))
    assert not fit.reached


def test_zero_scores_are_never_selected() -> None:
    # A score of 0 means the check reported nothing: no threshold can flag that text.
    fit = fit_threshold([0.9, 0.0, 0.0], [1, 1, 0], Target("recall", 1.0))
    assert not fit.reached
    assert fit.threshold is not None and fit.threshold > 0
    assert fit_threshold([0.0, 0.0], [1, 0], Target("fbeta", 1.0)).threshold is None


def test_ties_between_classes_are_cut_together() -> None:
    fit = fit_threshold([0.8, 0.5, 0.5, 0.2], [1, 1, 0, 0], Target("recall", 1.0))
    assert fit.threshold is not None and 0.2 < fit.threshold <= 0.5
    assert counts_at([0.8, 0.5, 0.5, 0.2], [1, 1, 0, 0], fit.threshold).selected == 3


def test_fit_matches_brute_force_on_random_scores() -> None:
    rng = random.Random(7)
    for trial in range(40):
        n = rng.randint(8, 60)
        y = [rng.random() < 0.4 for _ in range(n)]
        y[0], y[1] = True, False
        s = [round(min(1.0, max(0.01, rng.gauss(0.65 if v else 0.4, 0.2))), 2) for v in y]
        labels = [int(v) for v in y]
        p_min = rng.choice([0.6, 0.8, 0.9])
        cuts = sorted(set(s))
        feasible = [counts_at(s, labels, t) for t in cuts]
        feasible = [c for c in feasible if c.precision is not None and c.precision >= p_min]
        fit = fit_threshold(s, labels, Target("precision", p_min))
        assert fit.reached == bool(feasible), trial
        if feasible and fit.threshold is not None:
            got = counts_at(s, labels, fit.threshold)
            assert got.recall == max(c.recall for c in feasible), trial
            assert got.precision is not None and got.precision >= p_min


def test_fit_rejects_data_without_positives() -> None:
    with pytest.raises(CalibrationError, match="positive"):
        fit_threshold([0.1, 0.2], [0, 0], Target("fbeta", 1.0))


def test_held_out_and_scaling() -> None:
    rng = np.random.default_rng(0)
    y = np.array([1] * 40 + [0] * 60)
    # Separable but squeezed around 0.5: badly calibrated, so a rescaling must help.
    s = np.where(y == 1, 0.52, 0.48) + rng.normal(0, 0.005, len(y))
    scaling = compare_scaling(s, y)
    assert scaling is not None
    assert scaling.best != "raw"
    assert scaling.brier[scaling.best] < scaling.brier["raw"]
    out = held_out(s, y, Target("precision", 0.9))
    assert out is not None and out.folds == 5
    assert out.recall == 1.0 and out.precision == 1.0
    assert held_out(s[:3], y[:3], Target("precision", 0.9)) is None


# --- labelled CSVs -----------------------------------------------------------------------------


def _csv(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_labels_stages_and_empty_cells(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        'id,text,stage,toxicity.toxicity,pii.PERSON\n1,hello,input,0,\n2,"multi\nline",,1,0\n',
    )
    data = read_labelled_csv(path)
    assert data.columns == ("toxicity.toxicity", "pii.PERSON")
    assert [r.stage for r in data.rows] == ["input", "output"]
    assert data.rows[0].labels == {"toxicity.toxicity": 0}
    assert data.rows[1].text == "multi\nline" and data.rows[1].line == 4
    assert len(data.sha256) == 64


@pytest.mark.parametrize(
    ("content", "line", "column", "message"),
    [
        ("body,toxicity.toxicity\nx,1\n", 1, "text", "missing column 'text'"),
        ("text,toxicity.toxicity\nok,1\nbad,2\n", 3, "toxicity.toxicity", "'2' is not 0 or 1"),
        ("text,toxicity.toxicity\nok,yes\n", 2, "toxicity.toxicity", "not 0 or 1"),
        ("text,stage,toxicity.toxicity\nok,middle,1\n", 2, "stage", "not input or output"),
        ("text,toxicity.toxicity\nok,1,extra\n", 2, None, "3 cells"),
        ("text,score\nok,1\n", 1, "score", "not a label"),
        ("text\nok\n", 1, None, "no label columns"),
        ("text,toxicity.toxicity\nok,\n", 2, None, "no label in this row"),
    ],
)
def test_bad_csv_names_file_line_and_column(
    tmp_path: Path, content: str, line: int, column: str | None, message: str
) -> None:
    path = _csv(tmp_path, content)
    with pytest.raises(LabelledDataError) as info:
        read_labelled_csv(path)
    # Every problem is reported; find the one this case is about.
    problem = next((p for p in info.value.problems if message in p.message), info.value.problems[0])
    assert problem.location.file == str(path)
    assert problem.location.line == line, str(problem)
    assert problem.location.field == column, str(problem)
    assert message in problem.message, str(problem)


# --- a fake engine (unit tests only) -----------------------------------------------------------


class FakeEngine:
    """Scores from a table keyed by (stage, text); anything else is a test bug and raises.

    Findings carry the threshold the policy sets, as the real checks do.
    """

    def __init__(
        self,
        loaded: LoadedPolicy,
        table: dict[tuple[str, str], list[tuple[str, str, str, float]]],
        expect_enabled: dict[str, set[str]],
    ) -> None:
        self.policy = loaded.policy
        self.table = table
        self.calls = 0
        for stage, wanted in expect_enabled.items():
            enabled = {c.check for c in getattr(self.policy, stage) if c.enabled}
            if enabled != wanted:
                raise AssertionError(f"calibration enabled {enabled} on {stage}, expected only {wanted}")

    def _threshold(self, stage: str, check: str, label: str, engine: str) -> float:
        config = next(c for c in getattr(self.policy, stage) if c.enabled and c.check == check)
        if check == "toxicity" and engine == PROFANITY:
            return float(config.profanity.threshold)
        if check == "toxicity" and engine == CLASSIFIER:
            # labels: null means the checkpoint's built-in rules, as in ToxicityCheck.
            rules = config.labels if config.labels is not None else BUILT_IN
            return float(rules[label].threshold)
        if check == "pii":
            return float(config.entities[label].threshold)
        raise AssertionError(f"the fake does not know {check}.{label} from {engine}")

    def evaluate(self, texts: Sequence[str], stage: str) -> list[Decision]:
        self.calls += 1
        out = []
        for text in texts:
            if (stage, text) not in self.table:
                raise AssertionError(f"unexpected text {text!r} on stage {stage}")
            findings = [
                Finding(
                    check=check,
                    label=label,
                    score=score,
                    threshold=(t := self._threshold(stage, check, label, engine)),
                    triggered=score >= t,
                    action=BUILT_IN[label].action if engine == CLASSIFIER else Action.FLAG,
                    engine=engine,
                )
                for check, label, engine, score in self.table[(stage, text)]
            ]
            out.append(Decision(action=Action.ALLOW, text=text, findings=findings))
        return out


def _synthetic(n: int = 40, seed: int = 1) -> tuple[list[str], dict[tuple[str, str], list[Any]]]:
    """CSV lines and fake scores: toxicity on output; PERSON on input (0 when no finding)."""
    rng = random.Random(seed)
    lines = ["text,stage,toxicity.toxicity,pii.PERSON"]
    table: dict[tuple[str, str], list[Any]] = {}
    for i in range(n):
        tox = i % 2
        text = f"output text {i}"
        lines.append(f"{text},output,{tox},")
        score = min(1.0, max(0.01, rng.gauss(0.75 if tox else 0.35, 0.15)))
        table[("output", text)] = [("toxicity", "toxicity", PROFANITY, round(score, 3))]
        person = int(i % 3 == 0)
        text = f"input text {i}"
        lines.append(f"{text},input,,{person}")
        found = [("pii", "PERSON", "presidio", 0.85)] if person or i % 5 == 1 else []
        table[("input", text)] = found
    return lines, table


# Self-contained (the shipped policies change with their models): PII on input, the profanity tier
# on both stages, comments in every position a person might put them.
POLICY = """\
# A policy for calibration tests.
name: default
version: "1.0.0"
on_error: block
input:
  - check: pii   # names and phones
    entities:
      PHONE_NUMBER: {threshold: 0.4, action: redact}
      PERSON: {threshold: 0.6, action: redact}
  - check: toxicity
    profanity: {threshold: 0.8, action: flag}
output:
  # output checks
  - check: pii
    entities:
      PERSON: {threshold: 0.6, action: redact}
  - check: toxicity
    profanity: {threshold: 0.8, action: flag}  # flag only
generation:
  # Small models wander at high temperatures.
  defaults:
    temperature: 0.3

# Release gates.
gates:
  - "toxicity.flag_rate <= 0.05"
"""


@pytest.fixture
def default_copy(tmp_path: Path) -> LoadedPolicy:
    (tmp_path / "default.yaml").write_text(POLICY)
    return load_policy_file(tmp_path / "default.yaml")


def _run(loaded: LoadedPolicy, csv_path: Path, table: dict[Any, Any], target: str = "precision=0.9") -> Any:
    engines: list[FakeEngine] = []

    def factory(lp: LoadedPolicy) -> FakeEngine:
        engine = FakeEngine(lp, table, {"input": {"pii"}, "output": {"toxicity"}})
        engines.append(engine)
        return engine

    result = calibrate(loaded, read_labelled_csv(csv_path), parse_target(target), engine_factory=factory)
    assert engines and engines[0].calls > 0
    return result


def test_calibrate_fits_each_labelled_field(tmp_path: Path, default_copy: LoadedPolicy) -> None:
    lines, table = _synthetic()
    result = _run(default_copy, _csv(tmp_path, "\n".join(lines) + "\n"), table)
    by_field = {r.field.dotted: r for r in result.labels}
    assert set(by_field) == {"output.1.profanity.threshold", "input.0.entities.PERSON.threshold"}
    tox = by_field["output.1.profanity.threshold"]
    assert tox.n == 40 and tox.positives == 20 and tox.engine == PROFANITY
    assert tox.reached and tox.after.precision is not None and tox.after.precision >= 0.9
    assert tox.held_out is not None and tox.scaling is not None
    # PERSON: every positive scores 0.85 and so does one negative in five: precision 0.9 is out of reach.
    person = by_field["input.0.entities.PERSON.threshold"]
    assert not person.reached and not result.reached
    assert person.after == person.before  # an unreachable target keeps the previous threshold
    table_text = format_table(result)
    assert "before" in table_text and "after*" in table_text and "not reachable" in table_text


def test_policy_problems_are_found_before_any_model_loads(tmp_path: Path, default_copy: LoadedPolicy) -> None:
    def no_engine(lp: LoadedPolicy) -> Any:
        raise AssertionError("the engine must not be built for bad data")

    cases = [
        ("text,stage,bias.identity_attack\n" + "x,output,1\n" * 6, "runs no 'bias' check on output"),
        ("text,toxicity.hate\n" + "x,1\n" * 6, "has no label 'hate'"),
        ("text,toxicity.toxicity\n" + "x,1\n" * 9 + "y,0\n" * 2, "2 negatives"),
    ]
    for content, message in cases:
        data = read_labelled_csv(_csv(tmp_path, content))
        with pytest.raises(LabelledDataError) as info:
            calibrate(default_copy, data, parse_target("f1"), engine_factory=no_engine)
        problem = info.value.problems[0]
        assert message in problem.message, str(problem)
        assert problem.location.line == 1 and problem.location.field == data.columns[0]


def test_stale_finding_threshold_fails_loudly(tmp_path: Path, default_copy: LoadedPolicy) -> None:
    class WrongThreshold(FakeEngine):
        def _threshold(self, stage: str, check: str, label: str, engine: str) -> float:
            return 0.123

    lines, table = _synthetic()
    data = read_labelled_csv(_csv(tmp_path, "\n".join(lines) + "\n"))
    with pytest.raises(CalibrationError, match="cannot tell which policy field"):
        calibrate(
            default_copy,
            data,
            parse_target("f1"),
            engine_factory=lambda lp: WrongThreshold(lp, table, {}),
        )


def test_threshold_fields_of_both_toxicity_tiers() -> None:
    text = (
        "name: t\nversion: '1'\noutput:\n  - check: toxicity\n    detoxify: {checkpoint: somewhere}\n"
        "    labels: {toxicity: {threshold: 0.6}, threat: {threshold: 0.4}}\n"
    )
    config = parse_policy(text, "t.yaml").policy.output[0]
    fields = threshold_fields(config, "output", 0)
    assert [f.dotted for f in fields["toxicity"]] == [
        "output.0.profanity.threshold",
        "output.0.labels.toxicity.threshold",
    ]
    lexical, classifier = fields["toxicity"]
    assert lexical.matches(PROFANITY) and not lexical.matches("detoxify:x")
    assert classifier.matches("detoxify:x") and not classifier.matches(PROFANITY)
    assert fields["threat"][0].current == 0.4


# --- the written policy ------------------------------------------------------------------------


def test_written_policy_validates_round_trips_and_keeps_comments(
    tmp_path: Path, default_copy: LoadedPolicy
) -> None:
    lines, table = _synthetic()
    result = _run(default_copy, _csv(tmp_path, "\n".join(lines) + "\n"), table, "f1")
    out = tmp_path / "out" / "default-calibrated.yaml"
    out.parent.mkdir()
    written = write_calibrated(result, out)
    assert written.policy.version == "1.0.0+cal1" and written.name == "default"
    new_text = out.read_text()
    old_text = default_copy.path.read_text()
    # Every comment line of the original survives, in order.
    comments = [line for line in old_text.splitlines() if line.lstrip().startswith("#")]
    assert [line for line in new_text.splitlines() if line in comments] == comments
    cal = written.policy.calibration
    assert cal is not None and cal.target == "f1" and cal.data == "labels.csv"
    assert cal.based_on_sha256 == default_copy.sha256 and cal.rows == 80
    for r in result.labels:
        stage_configs = getattr(written.policy, r.field.stage)
        value: Any = stage_configs[r.field.index]
        for part in r.field.path:
            value = value[part] if isinstance(value, dict) else getattr(value, part)
        assert value == r.after.threshold
    # Nothing else changed: the input thresholds of toxicity and the output ones of PII are untouched.
    assert written.policy.input[1] == default_copy.policy.input[1]
    assert written.policy.output[0] == default_copy.policy.output[0]
    assert written.policy.generation == default_copy.policy.generation
    # A second calibration of the written file replaces the record and counts the version up.
    again = _run(written, _csv(tmp_path, "\n".join(lines) + "\n"), table, "recall=0.8")
    text2 = render_calibrated(again, tmp_path / "again.yaml")
    assert text2.count("calibration:") == 1 and text2.count("# Written by `assay calibrate`") == 1
    assert parse_policy(text2, "again.yaml").policy.version == "1.0.0+cal2"


@pytest.mark.parametrize(
    ("entry", "comment"),
    [
        # No profanity key at all: a line is added to the block mapping.
        ("  - check: toxicity\n    description: defaults  # the tier's defaults\n", "# the tier's defaults"),
        # A flow mapping without threshold: the key is added inside the braces.
        ("  - check: toxicity  # flow\n    profanity: {action: flag}\n", "# flow"),
    ],
)
def test_missing_threshold_keys_are_inserted(tmp_path: Path, entry: str, comment: str) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(f"name: p\nversion: '3'\noutput:\n{entry}  - check: bias\n")
    loaded = load_policy_file(policy)
    rows = ["text,toxicity.toxicity"] + [f"t{i},{i % 2}" for i in range(20)]
    table = {
        ("output", f"t{i}"): [("toxicity", "toxicity", PROFANITY, 0.6 if i % 2 else 0.3)] for i in range(20)
    }
    result = calibrate(
        loaded,
        read_labelled_csv(_csv(tmp_path, "\n".join(rows) + "\n")),
        parse_target("precision=1"),
        engine_factory=lambda lp: FakeEngine(lp, table, {"output": {"toxicity"}}),
    )
    written = write_calibrated(result, tmp_path / "p-cal.yaml")
    threshold = written.policy.output[0].profanity.threshold
    assert 0.3 < threshold <= 0.6 and threshold == result.labels[0].after.threshold
    assert written.policy.output[0].profanity.action == Action.FLAG
    assert written.policy.output[1] == loaded.policy.output[1]
    assert comment in (tmp_path / "p-cal.yaml").read_text()


@pytest.mark.parametrize("labels", ["", "    labels:   # built-in rules\n"])
def test_built_in_classifier_rules_are_written_out_when_calibrated(tmp_path: Path, labels: str) -> None:
    policy = tmp_path / "abuse.yaml"
    policy.write_text(
        "name: abuse\nversion: '1.0.0'\noutput:\n  - check: toxicity\n"
        f"    detoxify: {{checkpoint: abuse-minilm}}   # the default checkpoint\n{labels}"
    )
    loaded = load_policy_file(policy)
    rows = ["text,toxicity.hate,toxicity.toxicity"]
    table: dict[tuple[str, str], list[Any]] = {}
    for i in range(30):
        hate, toxic = i % 3 == 0, i % 2 == 0
        rows.append(f"t{i},{int(hate)},{int(toxic)}")
        table[("output", f"t{i}")] = [
            ("toxicity", "toxicity", PROFANITY, 0.9 if toxic else 0.2),
            ("toxicity", "hate", CLASSIFIER, 0.35 if hate else 0.1),
            ("toxicity", "insult", CLASSIFIER, 0.2),
            ("toxicity", "toxicity", CLASSIFIER, 0.7 if toxic else 0.3),
        ]
    result = calibrate(
        loaded,
        read_labelled_csv(_csv(tmp_path, "\n".join(rows) + "\n")),
        parse_target("precision=0.9"),
        engine_factory=lambda lp: FakeEngine(lp, table, {"output": {"toxicity"}}),
    )
    by_field = {r.field.dotted: r for r in result.labels}
    assert set(by_field) == {
        "output.0.labels.hate.threshold",
        "output.0.profanity.threshold",
        "output.0.labels.toxicity.threshold",
    }
    assert by_field["output.0.labels.hate.threshold"].before.threshold == 0.5  # from the findings
    written = write_calibrated(result, tmp_path / "abuse-cal.yaml")
    rules = written.policy.output[0].labels
    # Every built-in rule is written out (insult too), with the fitted thresholds in place.
    assert set(rules) == {"hate", "insult", "toxicity"}
    assert 0.1 < rules["hate"].threshold <= 0.35 and rules["hate"].action == Action.BLOCK
    assert 0.3 < rules["toxicity"].threshold <= 0.7 and rules["toxicity"].action == Action.ALLOW
    assert rules["insult"] == BUILT_IN["insult"]
    assert "# the default checkpoint" in (tmp_path / "abuse-cal.yaml").read_text()


def test_a_label_the_classifier_never_reports_is_an_error(tmp_path: Path) -> None:
    policy = tmp_path / "abuse.yaml"
    policy.write_text(
        "name: abuse\nversion: '1'\noutput:\n  - check: toxicity\n    detoxify: {checkpoint: x}\n"
    )
    rows = ["text,toxicity.sexual"] + [f"t{i},{i % 2}" for i in range(12)]
    table = {("output", f"t{i}"): [("toxicity", "hate", CLASSIFIER, 0.1)] for i in range(12)}
    with pytest.raises(CalibrationError, match=r"reported no 'sexual' finding.*labels it reported: hate"):
        calibrate(
            load_policy_file(policy),
            read_labelled_csv(_csv(tmp_path, "\n".join(rows) + "\n")),
            parse_target("f1"),
            engine_factory=lambda lp: FakeEngine(lp, table, {"output": {"toxicity"}}),
        )


def test_hand_edited_threshold_makes_the_record_stale(tmp_path: Path, default_copy: LoadedPolicy) -> None:
    lines, table = _synthetic()
    result = _run(default_copy, _csv(tmp_path, "\n".join(lines) + "\n"), table)
    out = tmp_path / "cal.yaml"
    write_calibrated(result, out)
    tox = next(r for r in result.labels if r.field.stage == "output")
    text = out.read_text()
    edited = text.replace(
        f"{{threshold: {tox.after.threshold!r}, action: flag}}", "{threshold: 0.7, action: flag}"
    )
    assert edited != text
    with pytest.raises(PolicyError, match="the calibration recorded"):
        parse_policy(edited, "edited.yaml")


def test_refuses_to_overwrite(tmp_path: Path, default_copy: LoadedPolicy) -> None:
    lines, table = _synthetic()
    result = _run(default_copy, _csv(tmp_path, "\n".join(lines) + "\n"), table)
    with pytest.raises(CalibrationError, match="being calibrated"):
        write_calibrated(result, default_copy.path)
    (tmp_path / "taken.yaml").write_text("x")
    with pytest.raises(CalibrationError, match="--force"):
        write_calibrated(result, tmp_path / "taken.yaml")


def test_next_version() -> None:
    assert next_version("1.0.0") == "1.0.0+cal1"
    assert next_version("1.0.0+cal9") == "1.0.0+cal10"


# --- the real CLI, end to end, with the profanity tier -----------------------------------------

TOXIC = [
    "You are a fucking idiot",
    "Shut up, you stupid moron",
    "What a piece of shit you are",
    "Go to hell, asshole",
    "You dumb bitch",
    "This is bullshit and you know it",
    "Fuck off and never come back",
    "you're a pathetic loser and an idiot",
]
CLEAN = [
    "The weather is lovely today",
    "Thanks for your help with the report",
    "Could you send me the invoice by Friday?",
    "I enjoyed the concert last night",
    "The meeting is moved to 3pm",
    "Please review the attached document",
    "I think the stupid printer is broken again",
    "That movie was damn good",
]


def test_cli_calibrates_the_profanity_tier_end_to_end(tmp_path: Path) -> None:
    policy = tmp_path / "tiny.yaml"
    policy.write_text(
        "# calibration e2e\nname: tiny\nversion: '2.1.0'\noutput:\n  - check: toxicity\n"
        "    profanity: {threshold: 0.99, action: flag}   # keep this comment\n"
    )
    rows = ["text,toxicity.toxicity"] + [f'"{t}",1' for t in TOXIC] + [f'"{t}",0' for t in CLEAN]
    data = _csv(tmp_path, "\n".join(rows) + "\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "calibrate",
            "--policy",
            str(policy),
            "--data",
            str(data),
            "--target",
            "recall=1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "output.0.profanity.threshold" in proc.stdout and "before" in proc.stdout
    out = tmp_path / "tiny-calibrated.yaml"
    written = load_policy_file(out)
    assert written.policy.version == "2.1.0+cal1"
    text = out.read_text()
    assert "# calibration e2e" in text and "# keep this comment" in text
    record = written.policy.calibration
    assert record is not None and record.thresholds[0].engine == PROFANITY
    point = record.thresholds[0].after
    assert point.recall == 1.0 and point.threshold < 0.99
    assert written.policy.output[0].profanity.threshold == point.threshold
    # A bad CSV is a clear error with file, line and column, and exit code 2.
    bad = _csv(tmp_path, "text,toxicity.toxicity\nfine,maybe\n", "bad.csv")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "calibrate",
            "--policy",
            str(policy),
            "--data",
            str(bad),
            "--target",
            "f1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 2
    assert f"{bad}:2" in proc.stderr and "toxicity.toxicity" in proc.stderr and "not 0 or 1" in proc.stderr
