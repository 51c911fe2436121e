"""Drift on the guarded path: each checked text becomes an event, and its result gets a ``drift`` score.

``DriftRuntime.observe`` is called where the checks ran (the API's inference
thread, a worker's pipeline), never on an event loop. It hands the events to the
recorder (which only appends to a buffer) and scores each item against the
policy's current baseline profile, which ``ProfileCache`` keeps in memory and
reloads in the background. The filtered texts are embedded (MiniLM, reduced)
once per batch: here for generation jobs and audits, so their results carry
novelty, and by the recorder's thread after the reply for /v1/moderate calls
(the policy's ``drift.embed_inline`` overrides both). Drift never fails a
request: if embedding or the baseline cannot be had, the event is recorded
without an embedding and the result says ``unavailable`` with the reason.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from evaluators.contracts.drift import DriftEvent, DriftScore, DriftStatus, Source, Stage
from evaluators.drift import embedding
from evaluators.drift.profile import BaselineProfile
from evaluators.drift.recorder import DriftRecorder
from evaluators.engine import Decision
from evaluators.findings import Action
from evaluators.policy import LoadedPolicy

log = logging.getLogger(__name__)

Loader = Callable[[LoadedPolicy, str], BaselineProfile | None]
"""The policy's current baseline profile for a model, or None when it has no baseline."""
Embed = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class Observation:
    """One guarded text (or a job's texts of one stage) as drift sees it."""

    stage: Stage
    source: Source
    action: Action
    scores: dict[str, float]
    entities: dict[str, int]
    length: int
    text: str | None
    """The filtered text to embed; None when blocked."""
    model: str = ""
    run_id: str = ""


def observe_decisions(
    texts: Sequence[str],
    decisions: Sequence[Decision],
    stage: Stage,
    source: Source,
    *,
    model: str = "",
    run_id: str = "",
) -> Observation:
    """One observation from the decisions on ``texts`` (the original texts, for their lengths)."""
    scores: dict[str, float] = {}
    entities: dict[str, int] = {}
    for d in decisions:
        for k, v in d.scores().items():
            scores[k] = max(scores.get(k, 0.0), v)
        for f in d.triggered:
            if f.check == "pii":
                entities[f.label] = entities.get(f.label, 0) + 1
    filtered = [d.text for d in decisions if d.text is not None]
    return Observation(
        stage=stage,
        source=source,
        action=Action.strongest([d.action for d in decisions]),
        scores=scores,
        entities=entities,
        length=sum(len(t) for t in texts),
        text="\n".join(filtered) if filtered else None,
        model=model,
        run_id=run_id,
    )


class Unavailable:
    """A baseline that could not be loaded, and why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass
class _Entry:
    value: BaselineProfile | Unavailable | None
    loaded_at: float
    refreshing: bool = False


@dataclass
class ProfileCache:
    """Baseline profiles per (policy version, model), loaded once and refreshed in the background."""

    loader: Loader
    ttl_s: float = 300.0
    _entries: dict[tuple[str, str, str], _Entry] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, lp: LoadedPolicy, model: str) -> BaselineProfile | Unavailable | None:
        key = (lp.name, lp.sha256, model)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if time.monotonic() - entry.loaded_at > self.ttl_s and not entry.refreshing:
                    entry.refreshing = True
                    threading.Thread(target=self._refresh, args=(key, lp, model), daemon=True).start()
                return entry.value
        # First use for this key: load now (workers, and the API warms up at startup).
        value = self._load(lp, model)
        with self._lock:
            self._entries[key] = _Entry(value, time.monotonic())
        return value

    def invalidate(self, policy: str | None = None) -> None:
        """Forget profiles (of one policy), e.g. after a new baseline is created."""
        with self._lock:
            for key in [k for k in self._entries if policy is None or k[0] == policy]:
                del self._entries[key]

    def _load(self, lp: LoadedPolicy, model: str) -> BaselineProfile | Unavailable | None:
        try:
            return self.loader(lp, model)
        except Exception as exc:
            log.warning("drift: baseline of policy %s not loaded: %s", lp.name, type(exc).__name__)
            return Unavailable(f"the baseline could not be loaded ({type(exc).__name__})")

    def _refresh(self, key: tuple[str, str, str], lp: LoadedPolicy, model: str) -> None:
        value = self._load(lp, model)
        with self._lock:
            self._entries[key] = _Entry(value, time.monotonic())


class DriftRuntime:
    """Records drift events and scores results, for one process."""

    def __init__(
        self, recorder: DriftRecorder | None, profiles: ProfileCache, *, embed: Embed | None = None
    ) -> None:
        self.recorder = recorder
        self.profiles = profiles
        self._embed = embed or embedding.embed
        if recorder is not None and recorder.embed is None:
            recorder.embed = self._embed  # one encoder for the inline and the deferred path
        self._rng = np.random.default_rng()
        self._rng_lock = threading.Lock()

    def observe(self, lp: LoadedPolicy, items: Sequence[Observation]) -> list[DriftScore]:
        """Record one event per item and return each item's drift score, in order."""
        config = lp.policy.drift
        if not config.enabled:
            detail = f"drift is turned off in policy {lp.name!r}"
            return [DriftScore(status=DriftStatus.DISABLED, stage=o.stage, detail=detail) for o in items]
        inline = [config.embed and config.inline_for(o.source) for o in items]
        vectors, embed_error = self._vectors([o if i else None for o, i in zip(items, inline, strict=True)])
        # Texts not embedded here go to the recorder, whose thread embeds them after the reply
        # (a uniform sample of them, when the policy asks for one).
        deferred = [
            o.text if config.embed and not i and self._sampled(config.embed_sample) else None
            for o, i in zip(items, inline, strict=True)
        ]
        if not config.embed:
            later: str | None = f"embeddings are off in policy {lp.name!r}"
        else:
            later = (
                f"novelty is not scored on the request path (policy {lp.name!r}: drift.embed_inline); "
                "the text is embedded for reports after the reply"
            )
        reasons = [embed_error if i else later for i in inline]
        now = dt.datetime.now(dt.UTC)
        events = [
            DriftEvent(
                at=now,
                policy=lp.name,
                policy_sha256=lp.sha256,
                model=o.model,
                stage=o.stage,
                source=o.source,
                run_id=o.run_id,
                action=o.action,
                scores=o.scores,
                entities=o.entities,
                length=o.length,
                embedding=None if v is None else tuple(float(x) for x in v),
            )
            for o, v in zip(items, vectors, strict=True)
        ]
        if self.recorder is not None:
            self.recorder.record(events, deferred)
        return [self._score(lp, o, v, r) for o, v, r in zip(items, vectors, reasons, strict=True)]

    def _sampled(self, share: float) -> bool:
        if share >= 1.0:
            return True
        with self._rng_lock:  # observe runs on several inference threads
            return bool(self._rng.random() < share)

    def _vectors(self, items: Sequence[Observation | None]) -> tuple[list[np.ndarray | None], str | None]:
        """Embeddings of the items' texts in one pass (None for a None item or a blocked text)."""
        texts = [o.text for o in items if o is not None and o.text is not None]
        if not texts:
            return [None] * len(items), None
        try:
            rows = iter(self._embed(texts))
        except Exception as exc:
            log.warning("drift: embedding failed: %s", type(exc).__name__)
            return [None] * len(items), f"the text could not be embedded ({type(exc).__name__})"
        return [None if o is None or o.text is None else next(rows) for o in items], None

    def _score(
        self, lp: LoadedPolicy, o: Observation, vector: np.ndarray | None, no_vector: str | None
    ) -> DriftScore:
        profile = self.profiles.get(lp, o.model)
        if isinstance(profile, Unavailable):
            return DriftScore(status=DriftStatus.UNAVAILABLE, stage=o.stage, detail=profile.reason)
        if profile is None:
            return DriftScore(
                status=DriftStatus.NO_BASELINE,
                stage=o.stage,
                detail=f"policy {lp.name!r} has no drift baseline yet (POST /v1/drift/baselines makes one)",
            )
        if o.text is None or no_vector is None:
            return profile.score(o.stage, o.scores, vector, lp.policy.drift)
        return profile.score(o.stage, o.scores, vector, lp.policy.drift, no_vector=no_vector)

    def warm_up(self, policies: Iterable[LoadedPolicy], model: str = "") -> None:
        """Load the encoder and the policies' baseline profiles now, so the first request does not."""
        enabled = [lp for lp in policies if lp.policy.drift.enabled]
        if not enabled:
            return
        try:
            if any(lp.policy.drift.embed for lp in enabled):
                self._embed(["warm up"])
        except Exception as exc:
            log.warning("drift: the sentence encoder did not load: %s", type(exc).__name__)
        for lp in enabled:
            self.profiles.get(lp, model)

    def stats(self) -> dict[str, int]:
        return self.recorder.stats().to_dict() if self.recorder is not None else {}

    def flush(self, timeout: float = 30.0) -> bool:
        return self.recorder.flush(timeout) if self.recorder is not None else True

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
