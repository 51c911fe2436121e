"""Typed contracts between the layers: a generation job, its result, an audit item.

The API builds a ``GenerationJob``, Celery carries it as JSON
(``model_dump(mode="json")``), the worker reads it back with
``GenerationJob.model_validate`` and returns a ``JobResult``, which the store
keeps and the API and audit aggregation read. An audit run expands its suite
into ``AuditItem``s and keeps one ``AuditItemResult`` per item. No layer reads
another's dicts by key.

The package lives in ``evaluators/`` so that the pure parts (policy limits,
audit aggregation) own the types they read; it imports nothing but the
evaluators' findings and pydantic.
"""

from evaluators.contracts.audits import (
    AuditItem,
    AuditItemResult,
    AuditRequest,
    AuditRun,
    ItemFinding,
    Status,
    work_key,
)
from evaluators.contracts.base import DEFAULT_TENANT, Contract
from evaluators.contracts.jobs import (
    GROUP_PLACEHOLDER,
    ChatMessage,
    FairnessSpec,
    GenerationJob,
    GenerationRequest,
    Prompt,
    SamplingOverrides,
    SamplingParams,
)
from evaluators.contracts.results import (
    CheckErrorRecord,
    FairnessGap,
    FairnessSummary,
    FairnessVariant,
    FindingRecord,
    JobError,
    JobResult,
    ModelInfo,
    PolicyIdentity,
    SpanRecord,
    StageResult,
    Usage,
)
from evaluators.contracts.streams import StreamEvent, StreamFinish

__all__ = [
    "DEFAULT_TENANT",
    "GROUP_PLACEHOLDER",
    "AuditItem",
    "AuditItemResult",
    "AuditRequest",
    "AuditRun",
    "ChatMessage",
    "CheckErrorRecord",
    "Contract",
    "FairnessGap",
    "FairnessSpec",
    "FairnessSummary",
    "FairnessVariant",
    "FindingRecord",
    "GenerationJob",
    "GenerationRequest",
    "ItemFinding",
    "JobError",
    "JobResult",
    "ModelInfo",
    "PolicyIdentity",
    "Prompt",
    "SamplingOverrides",
    "SamplingParams",
    "SpanRecord",
    "StageResult",
    "Status",
    "StreamEvent",
    "StreamFinish",
    "Usage",
    "work_key",
]
