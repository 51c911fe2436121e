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
    # Progress bars end up in worker logs as warnings; Assay logs its own timings.
    ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
):
    os.environ.setdefault(_name, _value)
