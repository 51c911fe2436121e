"""The hallucination check's entailment engine: chunking, pre-filter, int8, the trainer, and the
real ``nli-minilm`` model that ``assay models build`` makes (those tests skip, saying so, when it
has not been built; ``make test`` builds it first)."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

import pytest

from evaluators.checks import hallucination_nli
from evaluators.checks.base import CheckInput
from evaluators.checks.hallucination import HallucinationCheck, HallucinationConfig
from evaluators.checks.hallucination_evidence import sentence_windows
from evaluators.checks.hallucination_nli import resolve_nli_folder
from evaluators.errors import ModelMissingError
from evaluators.findings import Finding
from evaluators.nli_training import generated_pairs, swap_detail, train_nli
from evaluators.normalize import normalize
from evaluators.settings import evaluator_settings
from tests.unit.test_hallucination import CONSISTENT, INCONSISTENT, claims_of, overall_of, tiny_nli


def make(**fields: Any) -> HallucinationConfig:
    return HallucinationConfig.model_validate({"check": "hallucination", "device": "cpu", **fields})


def built_model() -> Path:
    folder = evaluator_settings().model_dir / "nli-minilm"
    if not (folder / "config.json").is_file():
        pytest.skip(f"nli-minilm is not built in {folder.parent}: run `assay models build` (make test does)")
    return folder


@pytest.mark.parametrize(
    ("lengths", "budget", "expected"),
    [
        ([], 10, []),
        ([4], 10, [(0, 1)]),
        ([4, 4, 4, 4], 100, [(0, 4)]),
        # Windows of up to 8 tokens, each starting half-way through the previous one.
        ([4, 4, 4, 4, 4], 8, [(0, 2), (1, 3), (2, 4), (3, 5)]),
        ([3, 3, 3, 3, 3, 3], 9, [(0, 3), (1, 4), (2, 5), (3, 6)]),
        # A sentence over the budget is a window of its own (the tokenizer truncates it).
        ([2, 50, 2], 10, [(0, 1), (1, 2), (2, 3)]),
    ],
)
def test_sentence_windows(lengths: list[int], budget: int, expected: list[tuple[int, int]]) -> None:
    windows = sentence_windows(lengths, budget)
    assert windows == expected
    covered = {i for a, b in windows for i in range(a, b)}
    assert covered == set(range(len(lengths)))
    for a, b in windows:
        assert b - a == 1 or sum(lengths[a:b]) <= budget


LONG_CONTEXT = " ".join(
    [f"Section {i} of the handbook describes the rules for parking permit zone {i}." for i in range(1, 40)]
    + ["Employees get 1.5 days of vacation per month."]
    + [f"Appendix {i} lists the phone extensions of office {i}." for i in range(1, 40)]
)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_nli(tmp_path_factory.mktemp("nli") / "tiny", {0: "not_entailment", 1: "entailment"})


def test_long_context_is_chunked_and_the_closest_windows_are_read(
    tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = HallucinationCheck(make(engine="nli", nli_model=str(tiny_folder), top_k=2, chunk_tokens=48))
    check.load()
    seen: list[tuple[str, str]] = []

    def fake_entailment(pairs: list[tuple[str, str]]) -> list[float]:
        seen.extend(pairs)
        # "Entailed" exactly when the premise holds the vacation sentence.
        return [0.9 if "vacation" in p else 0.1 for p, _ in pairs]

    monkeypatch.setattr(check, "_entailment", fake_entailment)
    (findings,) = check.evaluate(
        [CheckInput(normalize("Employees get 1.5 days of vacation per month."), context=(LONG_CONTEXT,))]
    )
    (claim,) = claims_of(findings)
    # top_k windows plus at most one packed premise, never the whole 80-sentence context.
    assert 2 <= len(seen) <= 3
    assert all(len(check._nli.tokenizer(p)["input_ids"]) <= 48 + 2 for p, _ in seen)  # type: ignore[union-attr]
    assert "vacation" in seen[0][0] or any("vacation" in p for p, _ in seen)
    assert claim.score == pytest.approx(0.1)
    assert claim.detail["entailment"] == pytest.approx(0.9)
    # The evidence is the window as it stands in the context, and holds the supporting sentence.
    assert "Employees get 1.5 days of vacation per month." in claim.detail["evidence"]
    assert claim.detail["evidence"] in LONG_CONTEXT
    assert claim.detail["support"] > 0.9  # similarity of the best sentence, as before


def test_self_consistency_averages_the_best_entailment_over_samples(
    tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = HallucinationCheck(make(engine="nli", nli_model=str(tiny_folder), mode="self_consistency"))
    check.load()
    monkeypatch.setattr(check, "_entailment", lambda pairs: [0.8 if "Pierre" in p else 0.2 for p, _ in pairs])
    answer = "Marie Curie won two Nobel Prizes. She kept a pet crocodile named Pierre in her laboratory."
    samples = [CONSISTENT[0], INCONSISTENT[0], INCONSISTENT[1], CONSISTENT[1]]
    (findings,) = check.evaluate([CheckInput(normalize(answer), extra={"samples": [answer, *samples]})])
    for f in claims_of(findings):
        # Two of four samples mention Pierre: mean best entailment (0.8 + 0.2 + 0.2 + 0.8) / 4.
        assert f.detail["entailment"] == pytest.approx(0.5)
        assert f.score == pytest.approx(0.5)


def test_missing_default_model_names_the_build_command(tmp_path: Path) -> None:
    settings = evaluator_settings().model_copy(update={"model_dir": tmp_path / "models"})
    with evaluator_settings.override(settings):
        with pytest.raises(ModelMissingError, match="run `assay models build`") as err:
            resolve_nli_folder("nli-minilm")
        assert err.value.extra["field"] == "nli_model"
        # Any other name is not ours to build: the message says what to put there instead.
        with pytest.raises(ModelMissingError, match="sequence-classification model"):
            resolve_nli_folder("my-own-nli")


@pytest.mark.parametrize(
    ("recorded", "setting", "int8"),
    [(True, "auto", True), (False, "auto", False), (False, True, True), (True, False, False)],
)
def test_int8_follows_the_build_verdict_unless_set(
    tmp_path: Path, recorded: bool, setting: bool | str, int8: bool
) -> None:
    import torch

    folder = tiny_nli(tmp_path / f"m-{recorded}-{setting}", {0: "not_entailment", 1: "entailment"})
    (folder / hallucination_nli.NLI_METADATA).write_text(json.dumps({"int8": {"recommended": recorded}}))
    check = HallucinationCheck(make(engine="nli", nli_model=str(folder), quantize_int8=setting))
    check.load()
    assert check._nli is not None
    assert check._nli.precision == ("int8" if int8 else "fp32")
    quantized = any("quantized" in type(m).__module__ for m in check._nli.model.modules())
    assert quantized is int8
    assert not any(isinstance(m, torch.nn.Linear) for m in check._nli.model.modules()) or not int8


def test_swap_replaces_a_detail_the_premise_uses() -> None:
    rng = random.Random(0)
    premise = "The bridge opened in 1932 after four years of work by Acme Steel."
    swapped = {swap_detail(premise, "The bridge opened in 1932.", rng) for _ in range(20)}
    assert None not in swapped
    assert all(s != "The bridge opened in 1932." and s.startswith("The bridge opened in ") for s in swapped)  # type: ignore[union-attr]
    # Nothing the premise shares with the claim: no swap.
    assert swap_detail("Cats sleep a lot.", "Dogs bark at 3 am.", rng) is None


def test_generated_pairs_are_copies_and_their_swaps() -> None:
    rows = [
        {
            "source": "x",
            "premise": f"Plant {i} was opened in {1900 + i}. It employs {10 + i} people at the plant today.",
            "hypothesis": f"Plant {i} employs {10 + i} people.",
            "label": 1,
        }
        for i in range(20)
    ]
    pairs = generated_pairs(rows, copies=5, swaps=10, rng=random.Random(0))
    copies = [p for p in pairs if p["source"] == "copy"]
    swaps = [p for p in pairs if p["source"] == "swap"]
    assert len(copies) == 5 and all(p["label"] == 1 and p["hypothesis"] in p["premise"] for p in copies)
    assert len(swaps) == 10 and all(p["label"] == 0 and p["hypothesis"] not in p["premise"] for p in swaps)


def _write_gz(path: Path, rows: list[dict[str, Any]]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def test_trainer_writes_a_folder_the_check_loads(tmp_path: Path) -> None:
    data = tmp_path / "data" / "nli"
    data.mkdir(parents=True)
    rng = random.Random(1)
    train = []
    for i in range(24):
        year = 1900 + i
        premise = f"The museum in town {i} opened in {year}. It has {i + 3} rooms and a small garden."
        good = rng.random() < 0.5
        claim = f"The museum opened in {year}." if good else f"The museum opened in {year + 7}."
        train.append(
            {"source": "mnli", "group": str(i), "premise": premise, "hypothesis": claim, "label": int(good)}
        )
    _write_gz(data / "train.jsonl.gz", train)
    pairs = [{"premise": r["premise"], "hypothesis": r["hypothesis"], "label": r["label"]} for r in train]
    _write_gz(data / "test_mnli.jsonl.gz", pairs)
    _write_gz(data / "test_fever.jsonl.gz", pairs)
    begin = [{"source": "wow", "knowledge": p["premise"], "response": p["hypothesis"], "label": p["label"]}
             for p in pairs]  # fmt: skip
    _write_gz(data / "test_begin.jsonl.gz", begin)
    out = tmp_path / "model"
    out.mkdir()
    messages: list[str] = []
    config = {"per_source": {"mnli": 24}, "copies": 4, "swaps": 4, "batch_size": 8, "eval_rows": 8}
    metrics = train_nli(out, tmp_path / "data", config, messages.append)
    assert metrics["train_pairs"] == 32
    assert {"mnli", "fever", "begin_wow"} <= set(metrics["held_out_fp32"])
    assert any(m.startswith("training 100%") for m in messages)
    meta = json.loads((out / "assay-model.json").read_text())
    assert isinstance(meta["int8"]["recommended"], bool)
    check = HallucinationCheck(make(engine="nli", nli_model=str(out)))
    check.load()
    (findings,) = check.evaluate(
        [CheckInput(normalize("The museum opened in 1905."), context=(str(train[5]["premise"]),))]
    )
    assert 0.0 <= overall_of(findings).score <= 1.0
    assert check.engine == "nli:model"


# --- the real model -------------------------------------------------------------------------

CONTRADICTIONS = [
    ("Employees get 1.5 days of vacation per month.", "Employees get 30 days of vacation per month."),
    ("The bridge opened in 1932.", "The bridge opened in 1952."),
    (
        "The Eiffel Tower was completed in 1889 for the World's Fair.",
        "The Eiffel Tower was completed in 1901 for the World's Fair.",
    ),
]
# A known miss, kept visible: training swaps numbers and names the premise uses, and "Sunday" is
# in neither. strict: it fails loudly once a model gets it right.
WEEKDAYS = pytest.param(
    "The store is open from Monday to Friday.",
    "The store is open from Monday to Sunday.",
    marks=pytest.mark.xfail(reason="weekday-range swaps are not learnt yet", strict=True),
)


@pytest.fixture(scope="module")
def real() -> HallucinationCheck:
    folder = built_model()
    check = HallucinationCheck(make(engine="nli", nli_model=str(folder)))
    check.load()
    return check


def _claim(check: HallucinationCheck, text: str, context: str) -> Finding:
    (findings,) = check.evaluate([CheckInput(normalize(text), context=(context,))])
    (claim,) = claims_of(findings)
    return claim


@pytest.mark.parametrize(("context", "claim"), [*CONTRADICTIONS, WEEKDAYS])
def test_real_model_flags_a_contradiction_in_the_contexts_own_words(
    real: HallucinationCheck, context: str, claim: str
) -> None:
    found = _claim(real, claim, context)
    assert found.triggered, found
    assert found.engine == "nli:nli-minilm"
    # Similarity calls the same pair supported: this is what the engine is for.
    similarity = HallucinationCheck(make())
    assert not _claim(similarity, claim, context).triggered


@pytest.mark.parametrize(
    ("context", "claim"), [(c, c) for c, _ in CONTRADICTIONS] + [(WEEKDAYS.values[0], WEEKDAYS.values[0])]
)
def test_real_model_supports_the_context_repeated(real: HallucinationCheck, context: str, claim: str) -> None:
    assert not _claim(real, claim, context).triggered


def test_real_model_finds_support_deep_in_a_long_context(real: HallucinationCheck) -> None:
    supported = _claim(real, "Employees get 1.5 days of vacation per month.", LONG_CONTEXT)
    contradicted = _claim(real, "Employees get 30 days of vacation per month.", LONG_CONTEXT)
    assert not supported.triggered, supported
    assert contradicted.triggered, contradicted
    assert "1.5 days of vacation" in supported.detail["evidence"]


def test_real_model_self_consistency() -> None:
    folder = built_model()
    check = HallucinationCheck(make(engine="nli", nli_model=str(folder), mode="self_consistency"))
    answer = "Marie Curie won two Nobel Prizes. She kept a pet crocodile named Pierre in her laboratory."
    (consistent,) = check.evaluate([CheckInput(normalize(answer), extra={"samples": CONSISTENT})])
    (inconsistent,) = check.evaluate([CheckInput(normalize(answer), extra={"samples": INCONSISTENT})])
    assert not overall_of(consistent).triggered
    crocodile = claims_of(inconsistent)[1]
    assert crocodile.triggered, crocodile
