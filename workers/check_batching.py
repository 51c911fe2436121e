"""Policy checks batched across a worker's concurrent tasks.

The threads pool runs up to 16 jobs at once, and each job's pipeline used to
run its policy's checks on its own one text: sixteen batches of one fighting
for the cores (at 16 concurrent jobs, 0.7-1.1 s of checks per job on two
cores). A :class:`CheckBatcher` per policy and stage lets them share one
``PolicyEngine.evaluate``:

* a caller that finds the batcher idle runs its texts at once, in its own
  thread (one job alone pays nothing for batching);
* callers that arrive while a batch runs queue up, and the first of them to
  find the batcher idle again runs everything queued as one batch (flat
  combining: no extra thread, no hand-off between threads).

Each caller gets back its own decisions, in order, as ``evaluate`` on its texts
alone would give them: per-text contexts and extras travel with their texts.
A batch that raises is retried caller by caller, so one bad text fails only
its own job.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from evaluators.engine import Decision, PolicyEngine, Stage
from evaluators.models import shared_model
from evaluators.policy import LoadedPolicy
from evaluators.runtime import release_openmp_threads
from workers.tracing import checks_span, current_span_context


@dataclass(eq=False)
class _Call:
    """One caller's texts, waiting for their decisions."""

    texts: Sequence[str]
    contexts: Sequence[Sequence[str]] | None
    extras: Sequence[dict[str, Any]] | None
    span: Any
    decisions: list[Decision] = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False


class CheckBatcher:
    """Concurrent ``evaluate`` calls on one policy and stage, run as shared batches."""

    def __init__(self, engine: PolicyEngine, policy: str, stage: Stage, *, max_texts: int = 64) -> None:
        self.engine = engine
        self.policy = policy
        self.stage: Stage = stage
        self.max_texts = max_texts
        """Texts per batch at most (a caller with more still runs whole, alone)."""
        self.batches = 0
        """Batches run so far (each one ``PolicyEngine.evaluate``)."""
        self._cond = threading.Condition()
        self._queue: deque[_Call] = deque()
        self._busy = False

    def evaluate(
        self,
        texts: Sequence[str],
        *,
        contexts: Sequence[Sequence[str]] | None = None,
        extras: Sequence[dict[str, Any]] | None = None,
    ) -> list[Decision]:
        """The decisions on ``texts``, as ``PolicyEngine.evaluate`` gives them; blocks until done."""
        if not texts:
            return []
        call = _Call(texts, contexts, extras, current_span_context())
        with self._cond:
            self._queue.append(call)
            while not call.done:
                if self._busy:
                    self._cond.wait()
                    continue
                batch = self._take()
                self._busy = True
                self._cond.release()
                try:
                    self._run(batch)
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()
        if call.error is not None:
            raise call.error
        return call.decisions

    def _take(self) -> list[_Call]:
        """The oldest queued calls, up to ``max_texts`` texts (always at least one call)."""
        batch = [self._queue.popleft()]
        size = len(batch[0].texts)
        while self._queue and size + len(self._queue[0].texts) <= self.max_texts:
            size += len(self._queue[0].texts)
            batch.append(self._queue.popleft())
        return batch

    def _run(self, batch: list[_Call]) -> None:
        try:
            self._evaluate(batch)
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                for call in batch:  # find the culprit; the others still get their decisions
                    try:
                        self._evaluate([call])
                    except Exception as alone:
                        call.error = alone
        except BaseException as exc:
            for call in batch:
                call.error = exc
            raise
        finally:
            for call in batch:
                call.done = True
            # This thread is done with torch until its next batch: its OpenMP pool would
            # throttle the decode thread's (evaluators/runtime.py).
            release_openmp_threads()

    def _evaluate(self, batch: list[_Call]) -> None:
        texts = [t for c in batch for t in c.texts]
        # A text without context or extras gets () and {}, which is what evaluate gives it alone.
        contexts = None
        if any(c.contexts for c in batch):
            contexts = [tuple(x) for c in batch for x in (c.contexts or [()] * len(c.texts))]
        extras = None
        if any(c.extras for c in batch):
            extras = [dict(x) for c in batch for x in (c.extras or [{}] * len(c.texts))]
        # Batch spans name every job they served (the first as parent, the rest as links).
        with checks_span(self.policy, self.stage, len(texts), parents=[c.span for c in batch]):
            decisions = self.engine.evaluate(texts, self.stage, contexts=contexts, extras=extras)
        self.batches += 1
        offset = 0
        for call in batch:
            call.decisions = decisions[offset : offset + len(call.texts)]
            offset += len(call.texts)


def check_batcher(lp: LoadedPolicy, engine: PolicyEngine, stage: Stage) -> CheckBatcher:
    """The process's batcher for ``lp``'s ``stage`` checks (in the model registry, beside its engine)."""
    key = f"check-batcher:{lp.name}:{lp.sha256}:{stage}"
    return shared_model(key, lambda: CheckBatcher(engine, lp.name, stage))
