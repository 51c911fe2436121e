"""Assay's checks and policy engine: a pure library with no web or queue imports."""

import os

# Assay runs offline: no model hub, no public-suffix list fetch. Set before
# transformers or tldextract are imported anywhere in the process; an
# explicit environment setting still wins.
for _name, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("HF_HUB_DISABLE_TELEMETRY", "1"),
    ("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", ""),
    ("TOKENIZERS_PARALLELISM", "false"),
    # OpenMP threads that spin while waiting collapse under CPU contention (the API,
    # a worker and anything else sharing the cores): measured 480 ms instead of
    # 30 ms for one MiniLM call on 2 busy cores. Passive waiting sleeps instead.
    ("OMP_WAIT_POLICY", "PASSIVE"),
    # Progress bars end up in worker logs as warnings; Assay logs its own timings.
    ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
):
    os.environ.setdefault(_name, _value)
