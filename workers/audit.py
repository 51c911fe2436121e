"""The worker's audit runner: the evaluators' ``AuditRunner`` on the store and the guarded pipeline.

Orchestration lives in ``evaluators.audit.runner``; this module only supplies
its ports, so the Celery tasks and the embedded CLI run the same code.
"""

from __future__ import annotations

from evaluators.audit.runner import AuditRunner
from evaluators.policy import PolicyStore
from store.audits import AuditStore, audit_store
from workers.pipeline import guarded_batch, worker_policies
from workers.settings import worker_settings


def run_store() -> AuditStore:
    """The audit repository on the configured database."""
    settings = worker_settings()
    return audit_store(settings.resolved_database_url(), retry_s=settings.store_retry_s)


def audit_runner(policies: PolicyStore | None = None) -> AuditRunner:
    """A runner on the store that runs batches through the guarded pipeline."""
    return AuditRunner(run_store(), guarded_batch, policies or worker_policies())
