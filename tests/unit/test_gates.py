"""Gates parse strictly, fail on missing data, and carry honest confidence intervals."""

from __future__ import annotations

import re

import numpy as np
import pytest

from evaluators.audit.gates import (
    Gate,
    Metric,
    bootstrap_gap_ci,
    evaluate_gates,
    gate_warnings,
    parse_gate,
    verdict,
    wilson_interval,
)
from evaluators.errors import PolicyError
from evaluators.policy import parse_policy


@pytest.mark.parametrize(
    ("text", "metric", "op", "value"),
    [
        ("toxicity.flag_rate <= 0.01", "toxicity.flag_rate", "<=", 0.01),
        ("pii.leak_rate == 0", "pii.leak_rate", "==", 0.0),
        ("  hallucination.rate<.1 ", "hallucination.rate", "<", 0.1),
        ("fairness.max_gap <= 0.05", "fairness.max_gap", "<=", 0.05),
        ("fairness.gender.gap < 5%", "fairness.gender.gap", "<", 0.05),
        ("fairness.race.refusal_gap != 1", "fairness.race.refusal_gap", "!=", 1.0),
        ("error.rate >= 0", "error.rate", ">=", 0.0),
        ("blocked.rate > 1e-3", "blocked.rate", ">", 0.001),
    ],
)
def test_parse_gate(text: str, metric: str, op: str, value: float) -> None:
    gate = parse_gate(text)
    assert (gate.metric, gate.op) == (metric, op)
    assert gate.threshold == pytest.approx(value)
    assert parse_gate(str(gate)) == gate


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("toxicity.flag_rate", "cannot parse gate"),
        ("toxicity.flag_rate =< 0.1", "cannot parse gate"),
        ("toxicity.flag_rate <= low", "cannot parse gate"),
        ("<= 0.1", "cannot parse gate"),
        ("sentiment.rate <= 0.1", "unknown metric family 'sentiment'"),
        ("toxicity.rate <= 0.1", "toxicity has: toxicity.flag_rate"),
        ("fairness.gender <= 0.1", "fairness.<dimension>.gap"),
        ("toxicity.flag_rate <= 5", "outside [0, 1]"),
        ("toxicity.flag_rate <= -0.1", "outside [0, 1]"),
    ],
)
def test_bad_gates_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_gate(text)


def test_wilson_matches_newcombe_1998() -> None:
    # Newcombe, Statistics in Medicine 17 (1998) 857-872, table I, method 3 (Wilson, no correction).
    cases = {
        (81, 263): (0.2553, 0.3662),
        (15, 148): (0.0624, 0.1605),
        (0, 20): (0.0, 0.1611),
        (1, 29): (0.0061, 0.1718),
        (29, 29): (0.8830, 1.0),
    }
    for (k, n), (lo, hi) in cases.items():
        got = wilson_interval(k, n)
        assert got == pytest.approx((lo, hi), abs=5e-5), (k, n)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(3, 2)


def test_bootstrap_interval_covers_a_known_gap() -> None:
    rng = np.random.default_rng(7)
    true_gap = 0.3
    covered = 0
    for seed in range(20):
        groups = {
            "a": rng.binomial(1, 0.2, 300).astype(float).tolist(),
            "b": rng.binomial(1, 0.5, 300).astype(float).tolist(),
            "c": rng.binomial(1, 0.35, 300).astype(float).tolist(),
        }
        lo, hi = bootstrap_gap_ci(groups, n_boot=400, seed=seed)
        assert 0.0 <= lo < hi <= 1.0
        covered += lo <= true_gap <= hi
    # A 95% interval misses now and then; 20 tries with fewer than 16 hits would be broken.
    assert covered >= 16


def test_bootstrap_is_seeded_and_needs_two_groups() -> None:
    groups = {"a": [0.1, 0.2, 0.3], "b": [0.5, 0.6, 0.9, 0.4]}
    assert bootstrap_gap_ci(groups, seed=3) == bootstrap_gap_ci(groups, seed=3)
    with pytest.raises(ValueError, match="two groups"):
        bootstrap_gap_ci({"a": [0.1], "b": []})


def _rate(k: int, n: int) -> Metric:
    return Metric(value=k / n, n=n, k=k)


def test_evaluate_pass_fail_and_intervals() -> None:
    metrics = {
        "toxicity.flag_rate": _rate(1, 1000),
        "pii.leak_rate": _rate(3, 100),
        "error.rate": _rate(0, 1000),
        "fairness.max_gap": Metric(value=0.02, n=200, ci=(0.01, 0.08), kind="gap"),
    }
    results = evaluate_gates(
        ["toxicity.flag_rate <= 0.01", "pii.leak_rate == 0", "error.rate == 0", "fairness.max_gap <= 0.05"],
        metrics,
    )
    tox, pii, err, gap = results
    assert tox.passed and tox.conclusive and tox.reason is None
    assert tox.ci == pytest.approx(wilson_interval(1, 1000))  # filled in from k and n
    assert not pii.passed and pii.reason == "measured 3%, gate needs == 0%"
    assert err.passed and err.conclusive is False  # 0/1000 still allows a small rate
    assert gap.passed and gap.conclusive is False and "interval" in (gap.reason or "")
    assert verdict(results) == "fail"
    assert verdict([tox, err, gap]) == "pass"
    assert any("interval" in w for w in gate_warnings([tox, err, gap]))


def test_missing_or_empty_metric_fails() -> None:
    results = evaluate_gates(
        [Gate("hallucination.rate", "<=", 0.1), parse_gate("bias.flag_rate <= 0.1")],
        {"bias.flag_rate": Metric(value=None, n=0, k=0, note="bias is not among the output checks")},
    )
    missing, empty = results
    assert not missing.passed and "not measured" in (missing.reason or "")
    assert not empty.passed and "n=0" in (empty.reason or "") and "output checks" in (empty.reason or "")
    assert verdict(results) == "fail"


def test_no_gates_pass_with_a_warning() -> None:
    assert evaluate_gates([], {}) == []
    assert verdict([]) == "pass"
    assert "no gates" in gate_warnings([])[0]


def test_gate_result_serialises() -> None:
    (result,) = evaluate_gates(["pii.leak_rate <= 0.1"], {"pii.leak_rate": _rate(2, 50)})
    data = result.to_dict()
    assert data["gate"] == "pii.leak_rate <= 0.1" and data["k"] == 2 and len(data["ci"]) == 2
    assert Metric.from_dict(_rate(2, 50).to_dict()).value == pytest.approx(0.04)


def test_bad_gate_is_a_policy_error_at_its_line() -> None:
    text = (
        "name: gated\nversion: '1'\ngates:\n  - toxicity.flag_rate <= 0.05\n  - toxicity.flag_rat <= 0.05\n"
    )
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "gated.yaml")
    (problem,) = info.value.problems
    assert (problem.location.line, problem.location.field) == (5, "gates.1")
    assert "unknown metric 'toxicity.flag_rat'" in problem.message
    ok = parse_policy(text.replace("flag_rat ", "flag_rate "), "gated.yaml")
    assert [str(g) for g in ok.policy.parsed_gates()] == ["toxicity.flag_rate <= 0.05"] * 2
