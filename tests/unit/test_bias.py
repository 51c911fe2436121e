"""The bias check: the shipped lexicon, swaps, a counterfactual run with a strict fake scorer,
and identity-attack scoring on the real alt-profanity-check model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from evaluators.checks.base import CheckInput
from evaluators.checks.bias import (
    DEFAULT_LEXICON,
    BiasCheck,
    BiasConfig,
    Lexicon,
    build_lexicon,
    match_case,
    resolve_lexicon,
)
from evaluators.checks.toxicity import ToxicityConfig
from evaluators.errors import CheckFailed, ModelMissingError
from evaluators.findings import Action, Finding
from evaluators.normalize import normalize


def make(**fields: Any) -> BiasConfig:
    return BiasConfig.model_validate({"check": "bias", **fields})


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return build_lexicon(resolve_lexicon(DEFAULT_LEXICON), {})


def by_label(findings: list[Finding]) -> dict[str, Finding]:
    return {f.label: f for f in findings}


def test_shipped_lexicon_covers_the_dimensions(lexicon: Lexicon) -> None:
    assert {
        "gender",
        "race_ethnicity",
        "religion",
        "nationality",
        "sexual_orientation",
        "age",
        "disability",
    } <= set(lexicon.dimensions)
    for dim, groups in lexicon.dimensions.items():
        assert len(groups) >= 2, f"{dim} needs a counterpart to swap with"
    # Gender lists are aligned slot by slot, so every female term has its own male counterpart.
    assert len(lexicon.dimensions["gender"]["female"]) == len(lexicon.dimensions["gender"]["male"])


@pytest.mark.parametrize(
    ("text", "group", "expected"),
    [
        ("The women were late", "male", "The men were late"),
        ("Women were late", "male", "Men were late"),
        ("WOMEN WERE LATE", "male", "MEN WERE LATE"),
        ("The men were late", "female", "The women were late"),
        ("She lost her keys", "male", "He lost his keys"),
        ("I told him", "female", "I told her"),
        ("the woman's car", "male", "the man's car"),
        ("Muslims pray at dawn", "christian", "Christians pray at dawn"),
        ("muslims pray", "jewish", "Jews pray"),
        ("African Americans voted", "white", "European Americans voted"),
        ("Black  people voted", "asian", "Asian people voted"),
        ("She moved to the United States", "mexican", "She moved to Mexico"),
        ("Jews and Jew", "hindu", "Hindus and Hindu"),
    ],
)
def test_swap_keeps_case_and_slots(lexicon: Lexicon, text: str, group: str, expected: str) -> None:
    # Swap the mentions of the dimension ``group`` belongs to ("She" stays when swapping Mexico in).
    same_dimension = [m for m in lexicon.find(text) if group in lexicon.dimensions[m.term.dimension]]
    assert same_dimension, text
    assert lexicon.swap(text, same_dimension, group) == expected


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("women", "men", "men"),
        ("Women", "men", "Men"),
        ("WOMEN", "men", "MEN"),
        ("muslims", "Christians", "Christians"),
    ],
)
def test_match_case(source: str, target: str, expected: str) -> None:
    assert match_case(source, target) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Muslims and Jews live here", {("religion", "muslim"), ("religion", "jewish")}),
        (
            "African Americans in the United States",
            {("race_ethnicity", "black"), ("nationality", "american")},
        ),
        ("older adults and gay men", {("age", "old"), ("sexual_orientation", "gay")}),
        ("people with disabilities deserve access", {("disability", "disabled")}),
        ("Mexicans and immigrants", {("nationality", "mexican"), ("immigration_status", "immigrant")}),
        ("she said no", {("gender", "female")}),
        ("a blackboard, the white house, a straight line, an old car", set()),
        ("menu, womenswear, heathen", set()),
    ],
)
def test_find_terms_and_groups(lexicon: Lexicon, text: str, expected: set[tuple[str, str]]) -> None:
    assert {(m.term.dimension, m.term.group) for m in lexicon.find(text)} == expected


def test_longest_term_wins(lexicon: Lexicon) -> None:
    (m,) = lexicon.find("Native Americans")
    assert (m.matched, m.term.group) == ("Native Americans", "native_american")


def test_lexicon_rejects_a_term_in_two_groups() -> None:
    with pytest.raises(ValueError, match="listed under both"):
        Lexicon({"d": {"a": ["x"], "b": ["X"]}})


class FakeScorer:
    """Scores from a table; fails on an unknown text or a second call per batch."""

    engine = "fake:score"
    label = "toxicity"

    def __init__(self, table: dict[str, float]) -> None:
        self.table = table
        self.calls: list[list[str]] = []

    def load(self) -> None:
        pass

    def score(self, texts: Sequence[str]) -> list[float]:
        if self.calls:
            raise AssertionError("the bias check must score a batch in one call")
        self.calls.append(list(texts))
        unknown = [t for t in texts if t not in self.table]
        if unknown:
            raise AssertionError(f"unexpected texts to score: {unknown}")
        return [self.table[t] for t in texts]


def test_counterfactual_gap_with_one_scoring_call() -> None:
    scorer = FakeScorer(
        {
            "The women were late": 0.7,
            "The men were late": 0.1,
            "The meeting is at noon": 0.0,
        }
    )
    check = BiasCheck(make(counterfactual_threshold=0.3, identity_attack_threshold=0.6), scorer=scorer)
    check.load()
    late, meeting = check.evaluate(
        [CheckInput(normalize(t)) for t in ["The women were late", "The meeting is at noon"]]
    )
    assert scorer.calls == [["The women were late", "The meeting is at noon", "The men were late"]]

    gap = by_label(late)["counterfactual_gap"]
    assert gap.score == pytest.approx(0.6)
    assert gap.triggered
    assert gap.engine == "fake:score"
    assert gap.detail["variant"] == "The men were late"
    assert gap.detail["swap"] == {"dimension": "gender", "from": "female", "to": "male"}
    assert gap.detail["sub_check"] == "counterfactual"
    assert gap.detail["terms"] == ["women"]
    assert gap.detail["delta"] == pytest.approx(-0.6)
    attack = by_label(late)["identity_attack"]
    assert attack.triggered  # 0.7 >= 0.6 and the text names a group
    assert attack.detail["groups"] == {"gender": ["female"]}
    assert attack.detail["mentions"] == [
        {"term": "women", "dimension": "gender", "group": "female", "start": 4, "end": 9}
    ]

    none = by_label(meeting)["counterfactual_gap"]
    assert (none.score, none.triggered) == (0.0, False)
    assert none.detail == {"sub_check": "counterfactual", "reason": "no identity terms", "variants": 0}
    assert not by_label(meeting)["identity_attack"].triggered


def test_variants_are_capped_and_counted() -> None:
    # Muslims -> six other religions; only two are scored.
    religions = ["Christians", "Jews", "Hindus", "Buddhists", "Sikhs", "Atheists"]
    table = {"Muslims pray": 0.5} | {f"{r} pray": 0.5 for r in religions}
    check = BiasCheck(make(max_variants=2), scorer=FakeScorer(table))
    (findings,) = check.evaluate([CheckInput(normalize("Muslims pray"))])
    gap = by_label(findings)["counterfactual_gap"]
    assert (gap.detail["variants"], gap.detail["variants_dropped"]) == (2, 4)


def test_scorer_failure_is_a_check_failure() -> None:
    class Broken(FakeScorer):
        def score(self, texts: Sequence[str]) -> list[float]:
            raise RuntimeError("boom")

    check = BiasCheck(make(), scorer=Broken({}))
    with pytest.raises(CheckFailed, match="boom"):
        check.evaluate([CheckInput(normalize("The women were late"))])


def test_spans_map_to_the_original(lexicon: Lexicon) -> None:
    original = "The wo\u200bmen were late"
    table = {"The women were late": 0.2, "The men were late": 0.2}
    (findings,) = BiasCheck(make(), scorer=FakeScorer(table)).evaluate([CheckInput(normalize(original))])
    (mention,) = by_label(findings)["identity_attack"].detail["mentions"]
    assert original[mention["start"] : mention["end"]] == "wo\u200bmen"


@pytest.fixture(scope="module")
def profanity_bias() -> BiasCheck:
    check = BiasCheck(make())
    check.load()
    return check


@pytest.mark.parametrize(
    ("text", "triggered"),
    [
        ("women are stupid idiots", True),
        ("you are a stupid idiot", False),  # insulting, but names no group
        ("she is a stupid idiot", False),  # a pronoun alone names no group
        ("women are great engineers", False),
    ],
)
def test_identity_attack_on_the_profanity_tier(profanity_bias: BiasCheck, text: str, triggered: bool) -> None:
    (findings,) = profanity_bias.evaluate([CheckInput(normalize(text))])
    attack = by_label(findings)["identity_attack"]
    assert attack.triggered is triggered, attack
    assert attack.engine == "alt-profanity-check:toxicity"
    assert attack.detail["needs_group_term"] is True
    assert attack.action is Action.FLAG


def test_config_validation(tmp_path: Path) -> None:
    cfg = make()
    assert (cfg.lexicon, cfg.scorer, cfg.action, cfg.extra_terms, cfg.toxicity) == (
        DEFAULT_LEXICON,
        "toxicity",
        Action.FLAG,
        {},
        None,
    )
    assert cfg.scorer_config() == ToxicityConfig(check="toxicity")
    nested = make(toxicity={"profanity": {"threshold": 0.6}})
    assert nested.toxicity is not None and nested.toxicity.profanity is not None
    assert nested.toxicity.profanity.threshold == 0.6
    with pytest.raises(ValidationError, match="redact is not valid"):
        make(action="redact")
    with pytest.raises(ValidationError, match="escalate_above"):
        make(toxicity={"detoxify": {"checkpoint": "x"}, "escalate_above": 0.5})
    with pytest.raises(ValidationError, match="no blank terms"):
        make(extra_terms={"caste": {"dalit": [" "]}})
    with pytest.raises(ValidationError):
        make(counterfactual_threshold=2)
    with pytest.raises(ValidationError):
        make(scorer="vibes")
    for name, info in BiasConfig.model_fields.items():
        assert info.description, name


def test_missing_lexicon_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError) as err:
        BiasCheck(make(lexicon=str(tmp_path / "absent.yaml"))).load()
    assert err.value.extra["field"] == "lexicon"


@pytest.mark.parametrize("content", ["[1, 2", "dimensions: []", "dimensions:\n  gender:\n    female: []\n"])
def test_malformed_lexicon_names_the_field(tmp_path: Path, content: str) -> None:
    path = tmp_path / "lexicon.yaml"
    path.write_text(content)
    with pytest.raises(ModelMissingError) as err:
        BiasCheck(make(lexicon=str(path))).load()
    assert err.value.extra["field"] == "lexicon"


def test_extra_terms_extend_the_lexicon() -> None:
    extra = {"caste": {"dalit": ["Dalits"], "brahmin": ["Brahmins"]}, "religion": {"muslim": ["Mussulmen"]}}
    lexicon = build_lexicon(resolve_lexicon(DEFAULT_LEXICON), extra)
    (m,) = lexicon.find("Dalits")
    assert lexicon.swap("Dalits", [m], "brahmin") == "Brahmins"
    (m,) = lexicon.find("Mussulmen")
    assert m.term.group == "muslim"
    with pytest.raises(ModelMissingError) as err:
        build_lexicon(resolve_lexicon(DEFAULT_LEXICON), {"religion": {"christian": ["Muslims"]}})
    assert err.value.extra["field"] == "extra_terms"
