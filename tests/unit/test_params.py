"""Generation parameters: policy defaults fill gaps, policy limits give 422s."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluators.contracts import SamplingParams
from evaluators.errors import InputError, LimitExceeded
from evaluators.policy import Policy, load_policy_file

ROOT = Path(__file__).resolve().parents[2]
STRICT = load_policy_file(ROOT / "policies" / "strict.yaml").policy


def resolve_params(policy: Policy, requested: dict[str, object]) -> SamplingParams:
    return policy.generation.resolve(requested, policy=policy.name)


def test_defaults_come_from_the_policy() -> None:
    params = resolve_params(STRICT, {"seed": 7})
    assert params.temperature == 0.3  # strict's default
    assert params.max_new_tokens == 128
    assert params.seed == 7
    assert params.stop == ()


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"temperature": 1.5}, "temperature=1.5 is above the policy maximum 1"),
        ({"max_new_tokens": 257}, "max_new_tokens=257 is above the policy maximum 256"),
        ({"top_p": -0.1}, "top_p=-0.1 is below the policy minimum 0"),
        ({"stop": ["a"] * 9}, "9 stop sequences"),
    ],
)
def test_outside_limits_is_limit_exceeded(params: dict[str, object], needle: str) -> None:
    with pytest.raises(LimitExceeded, match=needle):
        resolve_params(STRICT, params)


@pytest.mark.parametrize(
    "params",
    [{"temprature": 0.5}, {"max_new_tokens": 2.5}, {"stop": [""]}, {"seed": "x"}, {"temperature": True}],
)
def test_malformed_params_are_input_errors(params: dict[str, object]) -> None:
    with pytest.raises(InputError):
        resolve_params(STRICT, params)


def test_a_single_stop_string_is_a_list() -> None:
    assert resolve_params(STRICT, {"stop": "END"}).stop == ("END",)


def test_resolved_params_are_json_for_the_queue() -> None:
    params = resolve_params(STRICT, {"stop": ["a", "b"], "seed": 3})
    wire = params.model_dump(mode="json")
    assert wire["stop"] == ["a", "b"]
    assert SamplingParams.model_validate(wire) == params
