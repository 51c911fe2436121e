"""Inline moderation: ``POST /v1/moderate`` and ``POST /v1/moderate/batch``."""

from __future__ import annotations

import time
from typing import Any, Literal

from litestar import Controller, post
from litestar.datastructures import State
from litestar.params import Parameter
from pydantic import BaseModel, ConfigDict, Field

from evaluators.engine import Decision
from evaluators.errors import PayloadTooLarge
from evaluators.policy import LoadedPolicy
from service.auth import Principal, requires
from service.state import AppState, ModerationItem


class ModerateRequest(BaseModel):
    """One text to check against a policy."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The text to check.")
    policy: str = Field(default="default", description="Name of the policy to apply.")
    stage: Literal["input", "output"] = Field(
        default="output", description="Which of the policy's check lists to run."
    )
    context: list[str] | None = Field(
        default=None,
        description="Grounding documents for hallucination checks (retrieved passages, a reference).",
    )


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The text to check.")
    context: list[str] | None = Field(default=None, description="Grounding documents for this text.")


class ModerateBatchRequest(BaseModel):
    """Several texts checked against one policy in one call."""

    model_config = ConfigDict(extra="forbid")

    texts: list[str | BatchItem] = Field(min_length=1, description="Texts, or {text, context} items.")
    policy: str = Field(default="default", description="Name of the policy to apply.")
    stage: Literal["input", "output"] = Field(default="output", description="Which check list to run.")


def decision_body(decision: Decision, verbose: bool = False) -> dict[str, Any]:
    return decision.to_dict(all_findings=verbose)


def _policy_block(lp: LoadedPolicy) -> dict[str, str]:
    return lp.identity()


class ModerationController(Controller):
    path = "/v1/moderate"
    tags = ["moderation"]
    opt = requires("app")

    @post("/", status_code=200, summary="Check one text against a policy")
    async def moderate(
        self,
        data: ModerateRequest,
        state: State,
        principal: Principal,
        verbose: bool = Parameter(default=False, description="Also list findings that did not trigger."),
    ) -> dict[str, Any]:
        started = time.perf_counter()
        app: AppState = state.assay
        item = ModerationItem(data.text, tuple(data.context or ()))
        lp, (decision,) = await app.moderate(data.policy, data.stage, [item], principal)
        body = decision_body(decision, verbose)
        body["policy"] = _policy_block(lp)
        body["stage"] = data.stage
        body["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return body

    @post("/batch", status_code=200, summary="Check several texts against a policy")
    async def moderate_batch(
        self,
        data: ModerateBatchRequest,
        state: State,
        principal: Principal,
        verbose: bool = Parameter(default=False, description="Also list findings that did not trigger."),
    ) -> dict[str, Any]:
        started = time.perf_counter()
        app: AppState = state.assay
        if len(data.texts) > app.settings.max_batch_items:
            raise PayloadTooLarge(
                f"{len(data.texts)} texts sent; at most {app.settings.max_batch_items} per call",
                limit=app.settings.max_batch_items,
            )
        items = [
            ModerationItem(t, ()) if isinstance(t, str) else ModerationItem(t.text, tuple(t.context or ()))
            for t in data.texts
        ]
        lp, decisions = await app.moderate(data.policy, data.stage, items, principal)
        return {
            "results": [decision_body(d, verbose) for d in decisions],
            "policy": _policy_block(lp),
            "stage": data.stage,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
        }
