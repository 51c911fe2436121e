"""Streaming under the output checks: text reaches the client only after the checks over it passed.

The generator hands a streaming job's text to ``StreamGuard.on_text`` as it
is decoded, in whole words. The job's own thread (the Celery task, which
otherwise just waits for its output) runs the policy's output checks on a
sliding window: the new words plus up to ``overlap`` characters already
released, for context. What passes is published; a redaction applies to the
new part; a block stops the decode and ends the stream with
``content_filter``, and the blocked words are never published. Whatever a
window check had no time for is held, never sent unchecked. When decoding
ends, the rest is released only once the whole output passed its checks,
exactly as a non-streaming job's output is decided.

Checks that need the whole answer (hallucination, against its context or
other samples) cannot judge a window: under such a policy the stream holds
everything until the end.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from evaluators.contracts import GenerationJob, Status, StreamEvent, StreamFinish
from evaluators.engine import Decision, PolicyEngine
from evaluators.findings import Action, Finding, Span
from evaluators.redact import redact, should_redact
from store.jobs import job_store
from workers.generation import GenerationOutput
from workers.settings import WorkerSettings
from workers.streams import StreamWriter, stream_writer

log = logging.getLogger(__name__)

OVERLAP_CHARS = 100
"""Characters of released text a window check sees again before the new words (context)."""

FIRST_WINDOW_CHARS = 1
"""The first window is checked as soon as it holds a word: that is the time to first token."""

WINDOW_CHARS = 48
"""Later windows wait for this many new characters (or ``WINDOW_WAIT_S``): each check costs
about as much for eight words as for one, and competes with the decode for the cores."""

WINDOW_WAIT_S = 0.4
"""Words waiting this long are checked however few they are, so a slow stream keeps moving."""

CANCEL_POLL_S = 0.5
"""How often a streaming job asks whether it was cancelled (a client that went away)."""


def whole_answer_checks(engine: PolicyEngine) -> bool:
    """Whether the policy's output checks can only judge the whole answer."""
    return any(getattr(c, "check", None) == "hallucination" for c in engine.configs("output"))


def redact_tail(text: str, start: int, findings: list[Finding]) -> str:
    """``text[start:]`` with the redactions among ``findings`` (spans on ``text``) applied to it.

    A span that began before ``start`` is redacted from ``start`` on: what
    came before was released already.
    """
    shifted = [
        dataclasses.replace(f, span=Span(max(f.span.start, start) - start, f.span.end - start))
        for f in findings
        if should_redact(f) and f.span is not None and f.span.end > start
    ]
    return redact(text[start:], shifted) if shifted else text[start:]


class StreamGuard:
    """One streaming job: collects its decoded text, checks windows, publishes what passed."""

    def __init__(
        self,
        job_id: str,
        engine: PolicyEngine,
        writer: StreamWriter,
        *,
        context: tuple[str, ...] = (),
        cancelled: Callable[[], bool] = lambda: False,
        overlap: int = OVERLAP_CHARS,
        window_chars: int = WINDOW_CHARS,
        window_wait_s: float = WINDOW_WAIT_S,
    ) -> None:
        self.job_id = job_id
        self.engine = engine
        self.writer = writer
        self.context = context
        self.cancelled = cancelled
        self.overlap = overlap
        self.window_chars = window_chars
        self.window_wait_s = window_wait_s
        self.windows = not whole_answer_checks(engine)
        self.cancel = threading.Event()
        """Set to stop the decode: by a block, or by a cancelled job."""
        self.text = ""
        """The decoded text so far (original, unredacted)."""
        self.released = 0
        """Characters of ``text`` already checked and published."""
        self.blocked: Decision | None = None
        self.checks = 0
        self._last_check = time.monotonic()
        self._pieces: queue.Queue[str] = queue.Queue()

    def on_text(self, piece: str) -> None:
        """Called by the decode thread: only queues, so the batch never waits on checks."""
        self._pieces.put(piece)

    def follow(self, future: Future[GenerationOutput], timeout: float) -> GenerationOutput:
        """Check and publish while the decode runs; returns its output."""
        deadline = time.monotonic() + timeout
        next_poll = time.monotonic() + CANCEL_POLL_S
        while True:
            done = future.done()
            self._take(wait=0.0 if done else 0.05)
            if self.windows and self.blocked is None and not self.cancel.is_set():
                self._check_window()
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + CANCEL_POLL_S
                if not self.cancel.is_set() and self.cancelled():
                    log.info("job %s cancelled mid-stream; decoding stops", self.job_id)
                    self.cancel.set()
            if done and self._pieces.empty():
                return future.result(timeout=max(0.0, deadline - time.monotonic()))
            if time.monotonic() > deadline:
                self.cancel.set()
                return future.result(timeout=5.0)

    def finish(self, decision: Decision, output: GenerationOutput) -> Decision:
        """End the stream from the whole output's decision; returns the decision the job ends with.

        A window that blocked decides the job even if the whole output, cut
        short, would pass: the client was told ``content_filter``.
        """
        self._take(wait=0.0)
        final: Decision = self.blocked or decision
        try:
            if final.action is Action.BLOCK:
                self._end("content_filter")
                return final
            if output.text.startswith(self.text[: self.released]):
                rest = redact_tail(output.text, self.released, final.findings)
            else:  # the pieces and the output disagree: publish nothing unchecked or twice
                log.warning("job %s: streamed text is not a prefix of the output", self.job_id)
                rest = ""
            if rest:
                self.writer.publish(StreamEvent(kind="text", text=rest))
            self._end("length" if output.finish_reason == "length" else "stop")
            return final
        finally:
            self.writer.close()

    def abort(self) -> None:
        """The job failed: close the channel (the store says why)."""
        self.cancel.set()
        self.writer.close()

    # ----------------------------------------------------------------- internals

    def _take(self, wait: float) -> None:
        try:
            self.text += self._pieces.get(timeout=wait) if wait > 0 else self._pieces.get_nowait()
        except queue.Empty:
            return
        while True:
            try:
                self.text += self._pieces.get_nowait()
            except queue.Empty:
                return

    def _check_window(self) -> None:
        end = len(self.text)  # pieces end on a word boundary
        if end <= self.released or not self.text[self.released : end].strip():
            return
        wanted = self.window_chars if self.released else FIRST_WINDOW_CHARS
        if end - self.released < wanted and time.monotonic() - self._last_check < self.window_wait_s:
            return
        self._last_check = time.monotonic()
        start = max(0, self.released - self.overlap)
        if start > 0:  # begin the window on a word
            space = self.text.find(" ", start, self.released)
            start = space + 1 if space >= 0 else self.released
        window = self.text[start:end]
        contexts = [self.context] if self.context else None
        (decision,) = self.engine.evaluate([window], "output", contexts=contexts)
        self.checks += 1
        if decision.action is Action.BLOCK:
            self.blocked = decision
            self.cancel.set()
            log.info("job %s blocked mid-stream by the output checks", self.job_id)
            return
        piece = redact_tail(window, self.released - start, decision.findings)
        self.released = end
        self.writer.publish(StreamEvent(kind="text", text=piece))

    def _end(self, reason: StreamFinish) -> None:
        self.writer.publish(StreamEvent(kind="end", finish_reason=reason))


def start_guard(job: GenerationJob, engine: PolicyEngine, settings: WorkerSettings) -> StreamGuard | None:
    """The guard of a streaming job (None for the others), publishing on the deployment's channel."""
    if not job.stream or not job.job_id:
        return None
    job_id = job.job_id
    store = job_store(settings.resolved_database_url())

    def cancelled() -> bool:
        record = store.get(job_id)
        return record is not None and record.status == Status.CANCELLED

    writer = stream_writer(settings, job_id)
    return StreamGuard(job_id, engine, writer, context=tuple(job.context or ()), cancelled=cancelled)
