"""The engine folds findings into decisions; a check that cannot run never counts as safe."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from evaluators.checks.base import CheckInput
from evaluators.engine import PolicyEngine, _BoundCheck
from evaluators.findings import Action, Finding, Span
from evaluators.policy import parse_policy


class FakeCheck:
    """Flags texts containing a keyword; counts calls and rejects empty batches."""

    def __init__(self, name: str, keyword: str, action: Action, span: bool = False) -> None:
        self.name = name
        self.keyword = keyword
        self.action = action
        self.span = span
        self.batches: list[int] = []

    def load(self) -> None:
        pass

    def evaluate(self, batch: Sequence[CheckInput]) -> list[list[Finding]]:
        if not batch:
            raise AssertionError("empty batch")
        self.batches.append(len(batch))
        out: list[list[Finding]] = []
        for item in batch:
            hit = self.keyword in item.normalized.folded
            span = None
            if hit and self.span:
                start = item.normalized.folded.index(self.keyword)
                span = Span(*item.normalized.to_original(start, start + len(self.keyword)))
            out.append(
                [
                    Finding(
                        check=self.name,
                        label="kw",
                        score=1.0 if hit else 0.0,
                        threshold=0.5,
                        triggered=hit,
                        action=self.action,
                        engine="fake",
                        span=span,
                        detail={"redact_with": "tag"},
                    )
                ]
            )
        return out


class BrokenCheck:
    name = "broken"

    def load(self) -> None:
        pass

    def evaluate(self, batch: Sequence[CheckInput]) -> list[list[Finding]]:
        raise RuntimeError("engine offline")


class ShortCheck(BrokenCheck):
    name = "short"

    def evaluate(self, batch: Sequence[CheckInput]) -> list[list[Finding]]:
        return []


POLICY = parse_policy("name: t\nversion: '1'\n", "t.yaml")


def engine(*bound: tuple[object, Action]) -> PolicyEngine:
    checks = [
        _BoundCheck(check=c, config=None, on_error=on_error, index=i) for i, (c, on_error) in enumerate(bound)
    ]
    return PolicyEngine(POLICY, {"input": checks, "output": checks})  # type: ignore[arg-type]


def test_strongest_action_wins_and_block_removes_text() -> None:
    eng = engine(
        (FakeCheck("a", "rude", Action.FLAG), Action.BLOCK),
        (FakeCheck("b", "kill", Action.BLOCK), Action.BLOCK),
    )
    allowed, flagged, blocked = eng.evaluate(["hello", "you are rude", "rude and I will kill"], "output")
    assert allowed.action is Action.ALLOW and allowed.text == "hello"
    assert flagged.action is Action.FLAG and flagged.text == "you are rude"
    assert blocked.action is Action.BLOCK and blocked.text is None
    assert {f.check for f in blocked.triggered} == {"a", "b"}


def test_one_batch_per_check() -> None:
    check = FakeCheck("a", "x", Action.FLAG)
    engine((check, Action.BLOCK)).evaluate(["x"] * 7, "input")
    assert check.batches == [7]


def test_redaction_uses_original_spans() -> None:
    check = FakeCheck("pii", "secret", Action.REDACT, span=True)
    (d,) = engine((check, Action.BLOCK)).evaluate(["my se\u200bcret is here"], "output")
    assert d.action is Action.REDACT
    assert d.text == "my <kw> is here"


@pytest.mark.parametrize(
    ("on_error", "expected"),
    [(Action.BLOCK, Action.BLOCK), (Action.FLAG, Action.FLAG), (Action.ALLOW, Action.ALLOW)],
)
def test_failing_check_follows_on_error(on_error: Action, expected: Action) -> None:
    (d,) = engine((BrokenCheck(), on_error)).evaluate(["hello"], "output")
    assert d.action is expected
    assert d.errors and d.errors[0].check == "broken"
    assert "engine offline" in d.errors[0].error
    assert d.to_dict()["errors"][0]["action"] == expected.value


def test_check_returning_wrong_count_is_an_error_not_a_pass() -> None:
    (d,) = engine((ShortCheck(), Action.BLOCK)).evaluate(["hello"], "input")
    assert d.action is Action.BLOCK
    assert "returned 0 results" in d.errors[0].error


def test_scores_name_their_engine() -> None:
    (d,) = engine((FakeCheck("a", "rude", Action.FLAG), Action.BLOCK)).evaluate(["rude"], "output")
    body = d.to_dict()
    assert body["scores"] == {"a.kw": 1.0}
    assert body["engines"] == {"a.kw": "fake"}
    assert body["findings"][0]["engine"] == "fake"


class PickyCheck:
    """Cannot evaluate texts without a context, like a grounded hallucination check."""

    name = "picky"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def load(self) -> None:
        pass

    def evaluate(self, batch: Sequence[CheckInput]) -> list[list[Finding]]:
        self.calls.append(len(batch))
        if any(not item.context for item in batch):
            raise RuntimeError("could not evaluate: no context")
        return [[Finding("picky", "ok", 0.1, 0.5, False, Action.FLAG, "fake")] for _ in batch]


def test_one_item_that_cannot_run_does_not_fail_its_batch_mates() -> None:
    check = PickyCheck()
    eng = engine((check, Action.BLOCK))
    with_ctx, without, with_ctx2 = eng.evaluate(["a", "b", "c"], "output", contexts=[["doc"], [], ["doc"]])
    assert with_ctx.action is Action.ALLOW and not with_ctx.errors
    assert with_ctx2.action is Action.ALLOW and not with_ctx2.errors
    assert without.action is Action.BLOCK
    assert "no context" in without.errors[0].error
    assert check.calls == [3, 1, 1, 1]  # the batch, then each item alone
