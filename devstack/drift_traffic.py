"""Synthetic guarded traffic for drift tests and the drift benchmark: events with a known shape.

``TrafficShape`` says how often outputs are toxic, which PII types appear and
how long texts are; ``synthetic_events`` draws ``DriftEvent``s from it with a
seeded generator, so a planted shift is exactly the difference between two
shapes (or two pools of embeddings). Actions follow the default policy's rules:
PII of a redacted type redacts, insults and toxicity flag, hate and threats
block (and a blocked text has no embedding).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from evaluators.contracts.drift import DriftEvent, Source, Stage
from evaluators.drift.embedding import REDUCED_DIM
from evaluators.findings import Action

LABELS = ("toxicity", "hate", "insult", "threat", "sexual", "profanity")
REDACTED = frozenset({"PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD"})

SUPPORT = [
    "Where is my order {n}? It was supposed to arrive on {d}.",
    "I want a refund for the {item} I bought last week.",
    "Can I change the delivery address for order {n}?",
    "The {item} arrived broken, what should I do?",
    "How long does shipping to {c} usually take?",
    "My package says delivered but I never got the {item}.",
    "Do you offer express delivery for the {item}?",
    "I was charged twice for order {n}, please fix it.",
    "How do I return a {item} that does not fit?",
    "Is the {item} back in stock yet?",
]
HEALTH = [
    "What is the maximum daily dose of {drug} for an adult?",
    "Can I take {drug} together with {drug2}?",
    "I have had a fever and a sore throat since {d}, should I see a doctor?",
    "Is it safe to take {drug} during pregnancy?",
    "My child swallowed a {drug} tablet, what should I do?",
    "What are the side effects of {drug} at high doses?",
    "How long after taking {drug} can I drink alcohol?",
    "My blood pressure reading was {n} this morning, is that dangerous?",
    "Does {drug} interact with grapefruit juice?",
    "Which is better for a migraine, {drug} or {drug2}?",
]
_FILL = {
    "n": ["48213", "99120", "10447", "73310", "55102", "160/95", "140/90"],
    "d": ["Monday", "Friday", "the 3rd", "last Tuesday", "yesterday"],
    "item": ["jacket", "kettle", "phone case", "desk lamp", "pair of boots", "blender", "backpack"],
    "c": ["Canada", "Spain", "Japan", "Brazil", "Kenya"],
    "drug": ["ibuprofen", "paracetamol", "aspirin", "naproxen", "codeine", "loratadine"],
    "drug2": ["warfarin", "an antibiotic", "melatonin", "caffeine pills", "an antidepressant"],
}


# Order-support questions as an app would send them for moderation (plain, no slots).
SUPPORT_QUESTIONS = [
    "Where is my order? It was supposed to arrive on Monday.",
    "I want a refund for the kettle I bought last week.",
    "Can I change the delivery address for my order?",
    "The desk lamp arrived broken, what should I do?",
    "How long does shipping to Canada usually take?",
    "Is the blender back in stock yet?",
]


def topic_texts(templates: list[str], n: int, seed: int = 0) -> list[str]:
    """``n`` sentences from ``templates`` with their slots filled at random (seeded)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        text = templates[i % len(templates)]
        for slot, values in _FILL.items():
            text = text.replace("{" + slot + "}", values[int(rng.integers(len(values)))])
        out.append(text)
    return out


def random_pool(n: int, seed: int, centre: np.ndarray | None = None, spread: float = 0.6) -> np.ndarray:
    """``n`` unit vectors around a random (or given) centre: a stand-in topic without a model."""
    rng = np.random.default_rng(seed)
    c = centre if centre is not None else rng.standard_normal(REDUCED_DIM)
    v = c / np.linalg.norm(c) + spread * rng.standard_normal((n, REDUCED_DIM)) / np.sqrt(REDUCED_DIM)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class TrafficShape:
    """How synthetic traffic looks; a planted shift changes one thing."""

    toxic_rate: float = 0.05
    entity_rates: Mapping[str, float] = field(
        default_factory=lambda: {"PERSON": 0.15, "EMAIL_ADDRESS": 0.08, "PHONE_NUMBER": 0.05}
    )
    length_mu: float = 4.4
    length_sigma: float = 0.6


def synthetic_events(
    n: int,
    *,
    shape: TrafficShape,
    pools: list[tuple[np.ndarray, float]],
    start: dt.datetime,
    end: dt.datetime,
    seed: int,
    policy: str = "default",
    policy_sha256: str = "a" * 64,
    model: str = "smollm2",
    stage: Stage = "output",
    source: Source = "generation",
    run_id: str = "",
) -> list[DriftEvent]:
    """``n`` events spread uniformly over [start, end); embeddings from ``pools`` by their weights."""
    rng = np.random.default_rng(seed)
    span = (end - start).total_seconds()
    offsets = np.sort(rng.uniform(0, span, n))
    toxic = rng.random(n) < shape.toxic_rate
    low = rng.beta(1.0, 300.0, size=(n, len(LABELS)))
    scores = low.copy()
    scores[toxic, 0] = rng.beta(6.0, 2.0, toxic.sum())  # toxicity
    scores[toxic, 2] = rng.beta(5.0, 3.0, toxic.sum())  # insult
    scores[toxic, 5] = rng.beta(4.0, 3.0, toxic.sum())  # profanity
    entity_hits = {label: rng.random(n) < rate for label, rate in shape.entity_rates.items()}
    lengths = np.maximum(1, rng.lognormal(shape.length_mu, shape.length_sigma, n)).astype(int)
    weights = np.array([w for _, w in pools], dtype=np.float64)
    which = rng.choice(len(pools), size=n, p=weights / weights.sum())
    picks = [rng.integers(len(pools[k][0])) for k in which]
    noise = 0.05 * rng.standard_normal((n, REDUCED_DIM))
    events = []
    for i in range(n):
        s = dict(zip(LABELS, (round(float(v), 6) for v in scores[i]), strict=True))
        entities = {label: 1 for label, hits in entity_hits.items() if hits[i]}
        actions = [Action.ALLOW]
        if s["hate"] >= 0.5 or s["threat"] >= 0.5:
            actions.append(Action.BLOCK)
        if s["insult"] >= 0.5 or s["toxicity"] >= 0.5:
            actions.append(Action.FLAG)
        if any(label in REDACTED for label in entities):
            actions.append(Action.REDACT)
        action = Action.strongest(actions)
        vector = None
        if action is not Action.BLOCK:
            v = pools[which[i]][0][picks[i]] + noise[i]
            vector = tuple(float(x) for x in v / np.linalg.norm(v))
        events.append(
            DriftEvent(
                at=start + dt.timedelta(seconds=float(offsets[i])),
                policy=policy,
                policy_sha256=policy_sha256,
                model=model,
                stage=stage,
                source=source,
                run_id=run_id,
                action=action,
                scores={f"toxicity.{k}": v for k, v in s.items()},
                entities=entities,
                length=int(lengths[i]),
                embedding=vector,
            )
        )
    return events
