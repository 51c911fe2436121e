"""Process set-up that must happen before any model library is imported.

Called once at each entry point (the ``assay`` CLI, the API app factory, the
Celery app, tests and benchmarks), never at import: importing Assay's
modules changes nothing in the process.
"""

from __future__ import annotations

import os

# Assay runs offline: no model hub, no public-suffix list fetch. These must be
# in the environment before transformers, huggingface_hub, tldextract or torch
# (OpenMP reads its policy once) are imported; an explicit setting still wins.
OFFLINE_ENVIRONMENT: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "",
    "TOKENIZERS_PARALLELISM": "false",
    # OpenMP threads that spin while waiting collapse under CPU contention (the API,
    # a worker and anything else sharing the cores): measured 480 ms instead of
    # 30 ms for one MiniLM call on 2 busy cores. Passive waiting sleeps instead.
    "OMP_WAIT_POLICY": "PASSIVE",
    # Progress bars end up in worker logs as warnings; Assay logs its own timings.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


def configure_process() -> None:
    """Set Assay's offline and threading defaults in this process's environment.

    Idempotent; a variable already set (by the operator) is left as it is. Child
    processes inherit the result.
    """
    for name, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
