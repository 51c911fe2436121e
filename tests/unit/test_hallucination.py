"""The hallucination check on the real bundled MiniLM, plus a tiny real NLI-format model.

The NLI model is a one-layer BERT with a random head, written to a temporary
folder: it exercises loading, label lookup and pair scoring, not accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from evaluators.checks.base import CheckInput
from evaluators.checks.hallucination import (
    SIMILARITY_ENGINE,
    HallucinationCheck,
    HallucinationConfig,
    similarity_to_score,
)
from evaluators.embeddings import minilm_path, sentence_encoder, split_sentences
from evaluators.engine import PolicyEngine
from evaluators.errors import CheckFailed, ModelMissingError, PolicyError
from evaluators.findings import Action, Finding
from evaluators.normalize import normalize
from evaluators.policy import parse_policy

CONTEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. "
    "It was designed by the engineering company of Gustave Eiffel. "
    "The tower was completed in 1889 for the World's Fair. "
    "About seven million people visit it every year."
)


def make(**fields: Any) -> HallucinationConfig:
    return HallucinationConfig.model_validate({"check": "hallucination", "device": "cpu", **fields})


def claims_of(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.label == "unsupported_claim"]


def overall_of(findings: list[Finding]) -> Finding:
    (overall,) = [f for f in findings if f.label == "overall"]
    return overall


@pytest.fixture(scope="module")
def grounded() -> HallucinationCheck:
    check = HallucinationCheck(make())
    check.load()
    return check


@pytest.fixture(scope="module")
def consistency() -> HallucinationCheck:
    check = HallucinationCheck(make(mode="self_consistency"))
    check.load()
    return check


def test_encoder_gives_unit_vectors_in_input_order() -> None:
    enc = sentence_encoder("cpu")
    texts = ["a much longer sentence about the weather in spring", "hi", ""]
    vectors = enc.encode(texts)
    assert tuple(vectors.shape) == (3, 384)
    assert vectors.norm(dim=1).allclose(vectors.new_ones(3), atol=1e-5)
    # Sorting by length for batching must not reorder the output.
    assert vectors[1].allclose(enc.encode(["hi"])[0], atol=1e-5)
    assert enc.encode([]).shape[0] == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("One. Two three.", ["One.", "Two three."]),
        (
            "Dr. Smith arrived at 3.30 p.m. on Monday! He left.",
            ["Dr. Smith arrived at 3.30 p.m. on Monday!", "He left."],
        ),
        ("J. K. Rowling wrote it. Then what?", ["J. K. Rowling wrote it.", "Then what?"]),
        ("- first item\n- second item.\n\n  Third line  ", ["- first item", "- second item.", "Third line"]),
        ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
        ("lower case after stop. stays together", ["lower case after stop. stays together"]),
        ("", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert [text[s:e] for s, e in split_sentences(text)] == expected


@pytest.mark.parametrize(
    ("claim", "evidence"),
    [
        (
            "The Eiffel Tower stands in Paris.",
            "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
        ),
        (
            "Gustave Eiffel's company designed the tower.",
            "It was designed by the engineering company of Gustave Eiffel.",
        ),
        ("It was built for the 1889 World's Fair.", "The tower was completed in 1889 for the World's Fair."),
        (
            "Around 7 million people visit the tower annually.",
            "About seven million people visit it every year.",
        ),
    ],
)
def test_supported_claim_is_under_threshold_with_its_evidence(
    grounded: HallucinationCheck, claim: str, evidence: str
) -> None:
    (f,) = claims_of(grounded.evaluate([CheckInput(normalize(claim), context=(CONTEXT,))])[0])
    assert not f.triggered, f
    assert f.score < 0.5
    assert f.detail["evidence"] == evidence
    assert f.detail["support"] > 0.6
    assert (f.check, f.engine, f.threshold, f.action) == (
        "hallucination",
        SIMILARITY_ENGINE,
        0.5,
        Action.FLAG,
    )


@pytest.mark.parametrize(
    "claim",
    [
        "The tower has a rotating restaurant at the top that serves sushi.",
        "Napoleon was crowned emperor in 1804.",
        "The tower is painted bright red every spring.",
        "Bananas are a good source of potassium.",
    ],
)
def test_unsupported_claim_is_over_threshold(grounded: HallucinationCheck, claim: str) -> None:
    (f,) = claims_of(grounded.evaluate([CheckInput(normalize(claim), context=(CONTEXT,))])[0])
    assert f.triggered, f
    assert f.score >= 0.5
    assert f.effective_action is Action.FLAG


def test_mixed_text_spans_map_to_the_original_and_overall_is_the_worst_claim(
    grounded: HallucinationCheck,
) -> None:
    # A zero-width space and full-width letters: normalised offsets differ from the original's.
    original = "The Eiffel\u200b Tower stands in Ｐａｒｉｓ. Ok. Napoleon was crowned emperor in 1804."
    findings = grounded.evaluate([CheckInput(normalize(original), context=(CONTEXT,))])[0]
    supported, unsupported = claims_of(findings)  # "Ok." is under min_claim_chars
    assert supported.span is not None and unsupported.span is not None
    assert (
        original[supported.span.start : supported.span.end] == "The Eiffel\u200b Tower stands in Ｐａｒｉｓ."
    )
    assert original[unsupported.span.start : unsupported.span.end] == "Napoleon was crowned emperor in 1804."
    assert supported.detail["claim"] == "The Eiffel Tower stands in Paris."
    assert (supported.triggered, unsupported.triggered) == (False, True)
    overall = overall_of(findings)
    assert overall.span is None
    assert overall.score == max(supported.score, unsupported.score)
    assert overall.triggered
    assert overall.detail == {
        "aggregate": "max claim score",
        "claims": 2,
        "unsupported": 1,
        "unsupported_share": 0.5,
        "mode": "grounded",
    }


def test_batch_is_encoded_in_one_call(grounded: HallucinationCheck, monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = grounded._encoder
    assert encoder is not None
    calls: list[int] = []
    real = encoder.encode

    def counting(texts: Any) -> Any:
        calls.append(len(texts))
        return real(texts)

    monkeypatch.setattr(encoder, "encode", counting)
    items = [
        CheckInput(normalize("The Eiffel Tower stands in Paris. It opened in 1889."), context=(CONTEXT,)),
        CheckInput(
            normalize("Water boils at 100 degrees Celsius at sea level."), context=("Water boils at 100 C.",)
        ),
    ]
    results = grounded.evaluate(items)
    assert len(calls) == 1
    assert [len(claims_of(r)) for r in results] == [2, 1]


def test_text_without_claims_gets_an_overall_of_zero(grounded: HallucinationCheck) -> None:
    (findings,) = grounded.evaluate([CheckInput(normalize("Yes."), context=(CONTEXT,))])
    assert claims_of(findings) == []
    assert overall_of(findings).score == 0.0
    assert overall_of(findings).detail["claims"] == 0


@pytest.mark.parametrize("context", [(), ("",), ("   \n ",)])
def test_no_context_cannot_be_evaluated(grounded: HallucinationCheck, context: tuple[str, ...]) -> None:
    with pytest.raises(CheckFailed, match="could not evaluate: no context"):
        grounded.evaluate([CheckInput(normalize("The Eiffel Tower stands in Paris."), context=context)])


def test_one_item_without_context_fails_the_batch(grounded: HallucinationCheck) -> None:
    items = [
        CheckInput(normalize("The Eiffel Tower stands in Paris."), context=(CONTEXT,)),
        CheckInput(normalize("The Eiffel Tower stands in Paris.")),
    ]
    with pytest.raises(CheckFailed, match="item 1"):
        grounded.evaluate(items)


def test_engine_blocks_when_no_context_was_sent() -> None:
    loaded = parse_policy(
        "name: h\nversion: '1'\noutput:\n  - check: hallucination\n    device: cpu\n", "h.yaml"
    )
    engine = PolicyEngine.build(loaded)
    (decision,) = engine.evaluate(["The Eiffel Tower stands in Paris."], "output")
    assert decision.action is Action.BLOCK
    assert decision.findings == []
    assert "could not evaluate" in decision.errors[0].error
    (grounded_decision,) = engine.evaluate(
        ["The Eiffel Tower stands in Paris."], "output", contexts=[[CONTEXT]]
    )
    assert grounded_decision.action is Action.ALLOW


ANSWER = "Marie Curie won two Nobel Prizes. She kept a pet crocodile named Pierre in her laboratory."
CONSISTENT = [
    "Marie Curie received the Nobel Prize twice. She kept a crocodile called Pierre as a pet in her lab.",
    "Curie won two Nobel Prizes, in physics and chemistry. Her lab was home to her pet crocodile, Pierre.",
    "Marie Curie was awarded two Nobel Prizes. In her laboratory she kept a pet crocodile named Pierre.",
]
INCONSISTENT = [
    "Marie Curie received the Nobel Prize twice. She was born in Warsaw in 1867.",
    "Curie won two Nobel Prizes, in physics and chemistry. She discovered polonium and radium.",
    "Marie Curie was awarded two Nobel Prizes. She died in 1934 of aplastic anaemia.",
]


@pytest.mark.parametrize(("samples", "second_triggered"), [(CONSISTENT, False), (INCONSISTENT, True)])
def test_self_consistency(
    consistency: HallucinationCheck, samples: list[str], second_triggered: bool
) -> None:
    # The worker's samples[0] is the answer itself; the check must not count it as support.
    findings = consistency.evaluate([CheckInput(normalize(ANSWER), extra={"samples": [ANSWER, *samples]})])[0]
    first, second = claims_of(findings)
    assert not first.triggered, first
    assert second.triggered is second_triggered, second
    assert second.detail["mode"] == "self_consistency"
    assert overall_of(findings).triggered is second_triggered


@pytest.mark.parametrize("extra", [{}, {"samples": []}, {"samples": [ANSWER]}, {"samples": "not a list"}])
def test_self_consistency_without_samples_cannot_be_evaluated(
    consistency: HallucinationCheck, extra: dict[str, Any]
) -> None:
    with pytest.raises(CheckFailed, match="could not evaluate: no samples"):
        consistency.evaluate([CheckInput(normalize(ANSWER), extra=extra)])


def test_similarity_mapping_is_monotonic_and_centred() -> None:
    assert similarity_to_score(0.55) == pytest.approx(0.5)
    scores = [similarity_to_score(s / 10) for s in range(-10, 11)]
    assert scores == sorted(scores, reverse=True)
    assert similarity_to_score(1.0) < 0.001 < 0.999 < similarity_to_score(0.0)


def test_config_validation() -> None:
    cfg = make()
    assert (cfg.mode, cfg.engine, cfg.threshold, cfg.action, cfg.samples) == (
        "grounded",
        "similarity",
        0.5,
        Action.FLAG,
        4,
    )
    with pytest.raises(ValidationError, match="engine nli needs nli_model"):
        make(engine="nli")
    with pytest.raises(ValidationError, match="only read by engine: nli"):
        make(nli_model="somewhere")
    with pytest.raises(ValidationError):
        make(threshold=1.5)
    with pytest.raises(ValidationError):
        make(mode="vibes")
    with pytest.raises(ValidationError):
        make(unknown=1)
    for name, info in HallucinationConfig.model_fields.items():
        assert info.description, name


def test_nli_engine_with_missing_model_names_the_field(tmp_path: Path) -> None:
    check = HallucinationCheck(make(engine="nli", nli_model=str(tmp_path / "absent")))
    with pytest.raises(ModelMissingError) as err:
        check.load()
    assert err.value.extra["field"] == "nli_model"


def test_policy_with_missing_nli_model_points_at_the_field(tmp_path: Path) -> None:
    text = (
        "name: h\nversion: '1'\noutput:\n  - check: hallucination\n    engine: nli\n"
        f"    nli_model: {tmp_path / 'absent'}\n"
    )
    with pytest.raises(PolicyError) as err:
        PolicyEngine.build(parse_policy(text, "h.yaml"))
    (problem,) = err.value.problems
    assert problem.location.line == 6
    assert "not found" in problem.message


def tiny_nli(folder: Path, labels: dict[int, str]) -> Path:
    """A real one-layer BERT sequence classifier with MiniLM's tokenizer, randomly initialised."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm_path())).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def nli_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("nli") / "tiny-nli"
    return tiny_nli(folder, {0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"})


def test_nli_engine_scores_one_minus_entailment(nli_folder: Path) -> None:
    check = HallucinationCheck(make(engine="nli", nli_model=str(nli_folder), top_k=2))
    check.load()
    items = [
        CheckInput(normalize("The Eiffel Tower stands in Paris. It opened in 1889."), context=(CONTEXT,)),
        CheckInput(normalize(ANSWER), context=(CONTEXT,)),
    ]
    results = check.evaluate(items)
    for findings in results:
        for f in claims_of(findings):
            assert f.engine == "nli:tiny-nli"
            assert 0.0 <= f.score <= 1.0
            assert f.score == pytest.approx(1.0 - f.detail["entailment"], abs=1e-6)
            assert f.detail["evidence"] in CONTEXT
    consistency = HallucinationCheck(make(engine="nli", nli_model=str(nli_folder), mode="self_consistency"))
    (findings,) = consistency.evaluate([CheckInput(normalize(ANSWER), extra={"samples": CONSISTENT})])
    assert [f.engine for f in findings] == ["nli:tiny-nli"] * 3


def test_nli_model_without_an_entailment_label_is_refused(tmp_path: Path) -> None:
    folder = tiny_nli(tmp_path / "sentiment", {0: "NEGATIVE", 1: "POSITIVE"})
    with pytest.raises(ModelMissingError, match="entailment label") as err:
        HallucinationCheck(make(engine="nli", nli_model=str(folder))).load()
    assert err.value.extra["field"] == "nli_model"
