"""Hallucination check: is each claim of a text supported by evidence?

The text is split into sentences (the claims). Evidence is, in ``grounded``
mode, the sentences of the grounding documents sent with the request
(``CheckInput.context``), and in ``self_consistency`` mode (SelfCheckGPT),
the sentences of k extra answers sampled for the same prompt
(``CheckInput.extra["samples"]``): a claim the model keeps making is more
likely grounded in what it knows than one it makes once.

Two engines score a claim against evidence:

* ``similarity``: cosine similarity of MiniLM sentence embeddings, best match
  over the evidence sentences, mapped to a hallucination score by a logistic
  curve (``similarity_to_score``). It measures whether the evidence talks
  about the same thing, not whether it agrees: a claim that contradicts the
  context in the context's own words ("30 days of vacation" against "1.5 days
  per month") scores as supported. Use ``nli`` where that matters.
* ``nli``: a local sequence-classification model with an entailment label
  (by default ``nli-minilm``, the MiniLM cross-encoder ``assay models build``
  trains). The evidence documents are cut into windows of whole sentences
  that fit the encoder (``chunk_tokens``, consecutive windows overlapping by
  half); similarity is the cheap pre-filter that picks, per claim, the
  ``top_k`` windows holding the most similar sentences, plus one window made
  of the most similar sentences wherever they stand (for claims that join
  facts from far apart). The NLI model reads each as premise with the claim
  as hypothesis; the claim's score is ``1 - the best P(entailment)``. In
  self-consistency mode each sample is a document of its own and the best
  entailment is averaged over samples (SelfCheckGPT-NLI).

A text with nothing to check against (no context in grounded mode, no
samples in self-consistency mode) raises ``CheckFailed``, so the policy's
``on_error`` decides: it is never reported as supported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from evaluators.checks.base import CheckBase, CheckInput
from evaluators.checks.config import CheckConfigBase
from evaluators.checks.hallucination_evidence import (
    Chunk,
    Sentence,
    document_sentences,
    evidence_windows,
    premise,
)
from evaluators.checks.hallucination_nli import (
    NliModel,
    entailment_probs,
    int8_recommended,
    load_nli,
    resolve_nli_folder,
)
from evaluators.embeddings import SentenceEncoder, split_sentences
from evaluators.errors import CheckFailed
from evaluators.findings import Action, Finding, Span
from evaluators.models import shared_model
from evaluators.onnx_models import sentence_encoder
from evaluators.settings import evaluator_settings, resolve_device

SIMILARITY_ENGINE = "minilm-similarity"

# Logistic map from best cosine similarity to a hallucination score:
# score = 1 / (1 + exp((similarity - MIDPOINT) / SCALE)), so similarity MIDPOINT scores 0.5.
# Calibrated by hand on two contexts (an encyclopaedia paragraph, an HR policy) with 13
# paraphrased supported claims and 16 claims adding facts the context lacks: supported ones
# reached 0.64-0.94 with MiniLM, unsupported ones -0.01-0.46 (contradictions reusing the
# context's words reached 0.84 and are out of reach of similarity). 0.55 sits between the
# groups; scale 0.05 puts both edges of the gap (0.46, 0.64) at scores 0.86 and 0.14.
SIMILARITY_MIDPOINT = 0.55
SIMILARITY_SCALE = 0.05


def similarity_to_score(similarity: float) -> float:
    """Hallucination score in [0, 1] for a best-match cosine similarity (high similarity, low score)."""
    z = (similarity - SIMILARITY_MIDPOINT) / SIMILARITY_SCALE
    # Clamp to keep exp() finite; the score is 0 or 1 to double precision well before.
    return 1.0 / (1.0 + math.exp(max(min(z, 60.0), -60.0)))


class HallucinationConfig(CheckConfigBase):
    """Hallucination check: scores each claim of a text against grounding documents or samples."""

    check: Literal["hallucination"] = Field(description="Check name: hallucination.")
    mode: Literal["grounded", "self_consistency"] = Field(
        default="grounded",
        description=(
            "grounded: claims are checked against the request's context documents (no context: "
            "the check cannot run and on_error applies). self_consistency: claims are checked "
            "against extra answers sampled for the same prompt (SelfCheckGPT)."
        ),
    )
    engine: Literal["similarity", "nli"] = Field(
        default="similarity",
        description=(
            "similarity: MiniLM cosine similarity to the best evidence sentence (topic support; "
            "misses contradictions). nli: 1 - P(entailment) from the nli_model, evidence as premise."
        ),
    )
    nli_model: str | None = Field(
        default=None,
        description=(
            "Local folder of a transformers sequence-classification model with an entailment "
            "label (relative paths resolve against the project root, then the model directory). "
            "Required when engine is nli; never downloaded."
        ),
    )
    threshold: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Hallucination score at or above which a claim is unsupported (0 to 1).",
    )
    action: Action = Field(
        default=Action.FLAG,
        description="What an unsupported claim does: allow, flag, redact (cuts the claim) or block.",
    )
    min_claim_chars: int = Field(
        default=12,
        ge=1,
        le=10_000,
        description='Sentences shorter than this ("Yes.", list numbers) are not scored as claims.',
    )
    samples: int = Field(
        default=4,
        ge=1,
        le=32,
        description=(
            "self_consistency only: how many extra answers the generation worker samples "
            "(num_return_sequences) for the check to compare against."
        ),
    )
    top_k: int = Field(
        default=3,
        ge=1,
        le=50,
        description=(
            "nli only: evidence windows per claim (those holding the sentences MiniLM finds most "
            "similar) the NLI model reads, per document or sample; the best entailment counts."
        ),
    )
    min_similarity: float = Field(
        default=0.3,
        ge=-1.0,
        le=1.0,
        description=(
            "nli only: the similarity pre-filter. Windows whose most similar sentence is below this "
            "MiniLM cosine are not read by the NLI model (the closest window always is)."
        ),
    )
    chunk_tokens: int = Field(
        default=128,
        ge=16,
        le=480,
        description=(
            "nli only: word pieces per evidence window. Documents are cut into windows of whole "
            "sentences up to this size, each overlapping the previous one by half."
        ),
    )
    max_length: int = Field(
        default=256,
        ge=32,
        le=512,
        description="nli only: word pieces of (window, claim) the NLI model reads; the window is truncated.",
    )
    quantize_int8: bool | Literal["auto"] = Field(
        default="auto",
        description=(
            "nli only: dynamic int8 quantization of the NLI model's Linear layers (CPU only). auto: "
            "as its build measured (on when int8 kept held-out AUC within 0.005 of fp32)."
        ),
    )
    device: str = Field(
        default="auto",
        description="Torch device: auto (the evaluator setting, CUDA when present), cpu or cuda.",
    )
    batch_size: int = Field(default=64, ge=1, le=1024, description="Sentences or pairs per forward pass.")

    @model_validator(mode="after")
    def _consistent(self) -> HallucinationConfig:
        if self.engine == "nli" and not self.nli_model:
            raise ValueError("engine nli needs nli_model: a local folder of an NLI classifier")
        if self.engine == "similarity" and self.nli_model:
            raise ValueError("nli_model is only read by engine: nli; set engine: nli or drop nli_model")
        return self


@dataclass(frozen=True)
class Claim:
    """One sentence of a text scored as a claim."""

    start: int
    end: int
    """Offsets in the item's normalised text."""
    text: str


@dataclass
class _Scored:
    score: float
    support: float
    evidence: str
    entailment: float | None = None


class HallucinationCheck(CheckBase):
    """One ``unsupported_claim`` finding per claim plus one ``overall`` finding per text."""

    name: ClassVar[str] = "hallucination"
    config: HallucinationConfig

    def __init__(self, config: HallucinationConfig) -> None:
        super().__init__(config)
        self._encoder: SentenceEncoder | None = None
        self._nli: NliModel | None = None

    def _load(self) -> None:
        cfg = self.config
        self._encoder = sentence_encoder(cfg.device)
        if cfg.engine == "nli":
            assert cfg.nli_model is not None  # the config validator guarantees it
            folder = resolve_nli_folder(cfg.nli_model)
            device = resolve_device(evaluator_settings().device if cfg.device == "auto" else cfg.device)
            int8 = int8_recommended(folder) if cfg.quantize_int8 == "auto" else cfg.quantize_int8
            int8 = int8 and device == "cpu"
            # Named as the policy names it: the resolved folder of a build is its cache key.
            name = Path(cfg.nli_model).name
            key = f"nli:{name}:{folder}:{device}:{'int8' if int8 else 'fp32'}:{cfg.max_length}"
            self._nli = shared_model(
                key, lambda: load_nli(folder, device, int8=int8, max_length=cfg.max_length, name=name)
            )

    @property
    def engine(self) -> str:
        self._ensure_loaded()
        return self._nli.engine if self._nli is not None else SIMILARITY_ENGINE

    def claims(self, item: CheckInput) -> list[Claim]:
        """The sentences of ``item`` long enough to score, with offsets in its normalised text."""
        text = item.text
        return [
            Claim(s, e, text[s:e])
            for s, e in split_sentences(text)
            if e - s >= self.config.min_claim_chars and any(c.isalnum() for c in text[s:e])
        ]

    def _documents(self, item: CheckInput, index: int) -> list[str]:
        """The evidence documents of ``item``: its context (grounded) or its samples (self-consistency)."""
        if self.config.mode == "grounded":
            docs = [doc for doc in item.context if doc.strip()]
            if not docs:
                raise CheckFailed(
                    f"could not evaluate: no context documents for item {index} (grounded mode "
                    "needs the request's context; nothing is reported as supported without it)",
                    engine=self.engine,
                )
            return docs
        raw = item.extra.get("samples")
        samples = [s for s in raw if isinstance(s, str)] if isinstance(raw, list | tuple) else []
        # The generation worker's samples[0] is the answer itself: comparing it with itself
        # would support every claim.
        if samples and samples[0] == item.original:
            samples = samples[1:]
        samples = [s for s in samples if s.strip()]
        if not samples:
            raise CheckFailed(
                f"could not evaluate: no samples for item {index} (self_consistency mode needs "
                "extra['samples'], the extra answers the worker sampled)",
                engine=self.engine,
            )
        return samples

    def evaluate(self, batch: Sequence[CheckInput]) -> list[list[Finding]]:
        self._ensure_loaded()
        assert self._encoder is not None
        if not batch:
            return []
        claims = [self.claims(item) for item in batch]
        documents = [self._documents(item, i) for i, item in enumerate(batch)]
        evidence = [
            [s for g, doc in enumerate(docs) for s in document_sentences(doc, g)] for docs in documents
        ]

        # One encoder call for every claim and evidence sentence of the batch.
        texts = list(
            dict.fromkeys([c.text for cs in claims for c in cs] + [s.encode for ev in evidence for s in ev])
        )
        row = {t: i for i, t in enumerate(texts)}
        try:
            vectors = self._encoder.encode(texts)
        except Exception as exc:
            raise CheckFailed(f"sentence encoding failed: {exc}", engine=SIMILARITY_ENGINE) from exc

        scored: list[list[_Scored]] = []
        pairs: list[tuple[Chunk, str]] = []
        # For nli: per item, per claim, the queued pairs as (index into pairs, evidence group).
        queued: list[list[list[tuple[int, int]]]] = []
        for cs, ev, docs in zip(claims, evidence, documents, strict=True):
            out: list[_Scored] = []
            item_queued: list[list[tuple[int, int]]] = []
            if cs and ev:
                sims = vectors[[row[c.text] for c in cs]] @ vectors[[row[s.encode] for s in ev]].T
                lengths = self._token_counts([s.encode for s in ev]) if self._nli is not None else []
                windows = (
                    evidence_windows(ev, lengths, self.config.chunk_tokens) if self._nli is not None else []
                )
                for claim, claim_sims in zip(cs, sims.tolist(), strict=True):
                    out.append(self._similarity(claim_sims, ev))
                    if self._nli is not None:
                        item_queued.append(
                            self._queue_pairs(claim, claim_sims, ev, docs, windows, lengths, pairs)
                        )
            elif cs:  # documents without a sentence in them: nothing supports any claim
                out = [_Scored(score=1.0, support=0.0, evidence="", entailment=None) for _ in cs]
                item_queued = [[] for _ in cs]
            scored.append(out)
            queued.append(item_queued)

        if self._nli is not None:
            # One NLI pass over every pair of the batch.
            probs = self._entailment([(c.encode, claim) for c, claim in pairs])
            for out, item_queued in zip(scored, queued, strict=True):
                for result, claim_pairs in zip(out, item_queued, strict=True):
                    if not claim_pairs:
                        result.entailment = 0.0
                        continue
                    best: dict[int, int] = {}
                    for i, group in claim_pairs:
                        if group not in best or probs[i] > probs[best[group]]:
                            best[group] = i
                    # Grounded has one group (all context); self-consistency averages over samples.
                    result.entailment = sum(probs[i] for i in best.values()) / len(best)
                    result.score = 1.0 - result.entailment
                    result.evidence = pairs[max(best.values(), key=lambda i: probs[i])][0].shown

        return [self._findings(item, cs, out) for item, cs, out in zip(batch, claims, scored, strict=True)]

    def _similarity(self, sims: list[float], ev: list[Sentence]) -> _Scored:
        """Support of one claim: best match (grounded) or mean over samples of the best match."""
        best_i = max(range(len(ev)), key=lambda i: sims[i])
        if self.config.mode == "grounded":
            support = sims[best_i]
        else:
            per_group: dict[int, float] = {}
            for s, sim in zip(ev, sims, strict=True):
                per_group[s.group] = max(per_group.get(s.group, -1.0), sim)
            support = sum(per_group.values()) / len(per_group)
        return _Scored(score=similarity_to_score(support), support=support, evidence=ev[best_i].shown)

    def _token_counts(self, texts: Sequence[str]) -> list[int]:
        assert self._nli is not None
        with self._nli.lock:
            # Counting only: a sentence over the model's limit is fine here (it gets truncated).
            ids = self._nli.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return [len(x) for x in ids]

    def _queue_pairs(
        self,
        claim: Claim,
        sims: list[float],
        ev: list[Sentence],
        docs: list[str],
        windows: list[tuple[int, ...]],
        lengths: list[int],
        pairs: list[tuple[Chunk, str]],
    ) -> list[tuple[int, int]]:
        """Queue (premise, claim) pairs: per group, the top_k windows by their best sentence
        similarity, plus the most similar sentences packed into one premise."""
        grounded = self.config.mode == "grounded"
        by_group: dict[int, list[tuple[int, ...]]] = {}
        for w in windows:
            by_group.setdefault(0 if grounded else ev[w[0]].group, []).append(w)
        out: list[tuple[int, int]] = []
        for group, group_windows in by_group.items():
            ranked = sorted(group_windows, key=lambda w: -max(sims[i] for i in w))
            # The pre-filter: windows with nothing like the claim in them are not read (an
            # unrelated premise only adds chances of a spurious entailment); the closest always is.
            floor = self.config.min_similarity
            chosen = [w for w in ranked[: self.config.top_k] if max(sims[i] for i in w) >= floor] or ranked[
                :1
            ]
            # The sentences most like the claim, wherever they stand, up to one window's size:
            # a claim that joins two facts from far apart has both in one premise.
            members = [i for w in group_windows for i in w]
            top = [i for i in sorted(dict.fromkeys(members), key=lambda i: -sims[i]) if sims[i] >= floor]
            packed: list[int] = []
            total = 0
            for i in top[: self.config.top_k * 2]:
                if packed and total + lengths[i] > self.config.chunk_tokens:
                    break
                packed.append(i)
                total += lengths[i]
            if len(packed) > 1 and tuple(sorted(packed)) not in chosen:
                chosen.append(tuple(sorted(packed)))
            for w in chosen:
                out.append((len(pairs), group))
                pairs.append((premise(ev, w, docs), claim.text))
        return out

    def _entailment(self, pairs: list[tuple[str, str]]) -> list[float]:
        """P(entailment) per (premise, hypothesis) pair, in order."""
        assert self._nli is not None
        if not pairs:
            return []
        try:
            return entailment_probs(self._nli, pairs, self.config.batch_size)
        except Exception as exc:
            raise CheckFailed(f"NLI scoring failed: {exc}", engine=self._nli.engine) from exc

    def _findings(self, item: CheckInput, claims: list[Claim], scored: list[_Scored]) -> list[Finding]:
        cfg = self.config
        engine = self.engine
        findings: list[Finding] = []
        for claim, s in zip(claims, scored, strict=True):
            start, end = item.normalized.to_original(claim.start, claim.end)
            detail: dict[str, Any] = {
                "claim": claim.text,
                "evidence": s.evidence,
                "support": round(s.support, 6),
                "mode": cfg.mode,
            }
            if s.entailment is not None:
                detail["entailment"] = round(s.entailment, 6)
            findings.append(
                Finding(
                    check=self.name,
                    label="unsupported_claim",
                    score=s.score,
                    threshold=cfg.threshold,
                    triggered=s.score >= cfg.threshold,
                    action=cfg.action,
                    engine=engine,
                    span=Span(start, end),
                    detail=detail,
                )
            )
        unsupported = sum(f.triggered for f in findings)
        overall = max((f.score for f in findings), default=0.0)
        findings.append(
            Finding(
                check=self.name,
                label="overall",
                # The worst claim decides: the text is unsupported when any claim is.
                score=overall,
                threshold=cfg.threshold,
                triggered=unsupported > 0,
                # Redacting needs a span; the per-claim findings carry those.
                action=Action.FLAG if cfg.action is Action.REDACT else cfg.action,
                engine=engine,
                detail={
                    "aggregate": "max claim score",
                    "claims": len(findings),
                    "unsupported": unsupported,
                    "unsupported_share": round(unsupported / len(findings), 6) if findings else 0.0,
                    "mode": cfg.mode,
                },
            )
        )
        return findings
