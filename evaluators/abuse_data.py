"""The default abuse classifier's data: carried corpus and contrast templates.

Six labels a policy can act on separately: ``hate`` (an attack on a protected
group), ``insult`` (abuse aimed at a person or a non-protected group),
``threat``, ``sexual``, ``profanity`` (swearing that attacks no one) and
``toxicity`` (any of them). ``evaluators.abuse_training`` trains and evaluates
the model on this data.

Training data is ``data/abuse/corpus.csv`` (public sets, mapped by
``data/abuse/derive.py``; -1 marks a label a source does not annotate and is
masked out of the loss) plus the ``train`` templates of
``data/abuse/templates.yaml``. The ``test`` templates are never trained on:
they are the functional test suite reported per family.
"""

from __future__ import annotations

import csv
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from evaluators.normalize import normalize

LABELS: tuple[str, ...] = ("toxicity", "hate", "insult", "threat", "sexual", "profanity")
UNKNOWN = -1


@dataclass(frozen=True)
class Example:
    text: str
    labels: tuple[int, ...]
    """One value per ``LABELS`` entry: 1, 0, or -1 for unknown."""
    source: str
    family: str = ""


@dataclass(frozen=True)
class FamilyCase:
    text: str
    family: str
    hateful: bool
    expect: Mapping[str, int]


def _label_row(values: Mapping[str, int]) -> tuple[int, ...]:
    unknown = sorted(set(values) - set(LABELS))
    if unknown:
        raise ValueError(f"unknown label(s) {', '.join(unknown)}; labels are {', '.join(LABELS)}")
    return tuple(int(values.get(name, UNKNOWN)) for name in LABELS)


def load_corpus(data_dir: Path, split: str) -> list[Example]:
    """Rows of ``abuse/corpus.csv`` in ``split`` (train, dev or test)."""
    path = data_dir / "abuse" / "corpus.csv"
    out = []
    with path.open(encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["split"] == split:
                out.append(Example(r["text"], tuple(int(r[name]) for name in LABELS), r["source"]))
    return out


def _fill(template: str, slots: Mapping[str, Sequence[str]]) -> list[str]:
    names = sorted(set(re.findall(r"\{(\w+)\}", template)))
    if not names:
        return [template]
    if len(names) > 1:
        raise ValueError(f"template {template!r} uses more than one slot")
    name = names[0]
    if name not in slots:
        raise ValueError(f"template {template!r} uses unknown slot {{{name}}}")
    out = []
    for value in slots[name]:
        text = template.replace("{" + name + "}", value)
        out.append(text[0].upper() + text[1:])
    return out


_LEET = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5"}


def evade(text: str, rng: random.Random) -> str:
    """One spelling evasion of ``text``: a spaced, swapped, doubled, leet or masked word."""
    words = text.split(" ")
    # Perturb a content word, not a short function word.
    candidates = [i for i, w in enumerate(words) if len(w.strip(".,!?'")) >= 4]
    if not candidates:
        return text
    i = rng.choice(candidates)
    word = words[i]
    core = word.rstrip(".,!?'")
    tail = word[len(core) :]
    kind = rng.randrange(5)
    # Swapping two equal letters would change nothing.
    swappable = [j for j in range(1, len(core) - 2) if core[j] != core[j + 1]]
    if kind == 0:
        core = " ".join(core)
    elif kind == 1 and swappable:
        j = rng.choice(swappable)
        core = core[:j] + core[j + 1] + core[j] + core[j + 2 :]
    elif kind == 2:
        j = rng.randrange(1, len(core))
        core = core[:j] + core[j] + core[j:]
    elif kind == 3 and any(c in _LEET for c in core):
        core = "".join(_LEET.get(c, c) for c in core)
    else:
        vowels = [j for j, c in enumerate(core) if c in "aeiou" and j > 0] or [len(core) // 2]
        j = rng.choice(vowels)
        core = core[:j] + "*" + core[j + 1 :]
    words[i] = core + tail
    return " ".join(words)


def load_templates(data_dir: Path, split: str, *, seed: int = 0) -> tuple[list[Example], list[FamilyCase]]:
    """The ``split`` templates of every family, expanded: training examples and test cases."""
    path = data_dir / "abuse" / "templates.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    slots: Mapping[str, Sequence[str]] = doc["slots"]
    examples: list[Example] = []
    cases: list[FamilyCase] = []
    texts_by_family: dict[str, list[str]] = {}
    for family, spec in doc["families"].items():
        labels = _label_row(spec["labels"])
        expect = dict(spec["expect"])
        _label_row(expect)
        texts = [t for template in spec[split] for t in _fill(template, slots)]
        texts_by_family[family] = texts
        examples.extend(Example(t, labels, "templates", family) for t in texts)
        cases.extend(FamilyCase(t, family, bool(spec["hateful"]), expect) for t in texts)
    frames = doc.get("frames")
    if frames:
        _expand_frames(frames, doc, split, seed, examples, cases)
    ev = doc["evasion"]
    rng = random.Random(f"evasion:{split}:{seed}")
    ev_labels = _label_row(ev["labels"])
    for family in ev["from"]:
        for text in texts_by_family[family]:
            evaded = evade(text, rng)
            examples.append(Example(evaded, ev_labels, "templates", "evasion"))
            cases.append(FamilyCase(evaded, "evasion", bool(ev["hateful"]), dict(ev["expect"])))
    return examples, cases


_NEGATORS = ("are not", "aren't", "are never", "are far from")


def _expand_frames(
    frames: Mapping[str, Any],
    doc: Mapping[str, Any],
    split: str,
    seed: int,
    examples: list[Example],
    cases: list[FamilyCase],
) -> None:
    """Hateful statements of ``split`` inside condemning, denying or reporting frames."""
    rng = random.Random(f"frames:{split}:{seed}")
    groups = list(doc["slots"]["group"])
    statements: list[str] = []
    claims: list[str] = []
    for family in frames["from"]:
        for template in doc["families"][family][split]:
            group = rng.choice(groups)
            text = template.replace("{group}", group)
            statements.append(text[0].upper() + text[1:])
            if template.startswith("{group} "):
                claims.append(text.rstrip(".!"))
    per_frame = int(frames.get("per_frame", 10))
    for family, spec in frames["families"].items():
        fam = doc["families"][family]
        labels = _label_row(fam["labels"])
        for frame in spec[split]:
            if "{negated}" in frame:
                pool = [c.replace(" are ", f" {rng.choice(_NEGATORS)} ", 1) for c in claims if " are " in c]
            else:
                pool = claims if "{claim}" in frame else statements
            for filler in rng.sample(pool, min(per_frame, len(pool))):
                text = (
                    frame.replace("{statement}", filler)
                    .replace("{claim}", filler)
                    .replace("{negated}", filler)
                )
                text = text[0].upper() + text[1:]
                examples.append(Example(text, labels, "templates", family))
                cases.append(FamilyCase(text, family, bool(fam["hateful"]), dict(fam["expect"])))


def prepare(text: str) -> str:
    """What the toxicity check scores: the normalised, leetspeak-folded text."""
    return normalize(text).folded
