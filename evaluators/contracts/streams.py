"""What a streaming job publishes while it runs: released text, then the end of the stream.

The worker publishes a piece of text only after the policy's output checks
over it passed (``workers/stream_guard.py``); the API turns the pieces into
Server-Sent Events. The job store keeps the outcome, as for every job.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from evaluators.contracts.base import Contract

StreamFinish = Literal["stop", "length", "content_filter", "cancelled"]


class StreamEvent(Contract):
    """One event of a job's stream."""

    kind: Literal["text", "end"] = Field(description="text: a released piece; end: nothing follows.")
    text: str = Field(default="", description="The piece, as the client may see it (redacted where asked).")
    finish_reason: StreamFinish | None = Field(default=None, description="Why the stream ended (end only).")
