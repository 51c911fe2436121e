"""Process set-up that must happen before any model library is imported.

Called once at each entry point (the ``assay`` CLI, the API app factory, the
Celery app, tests and benchmarks), never at import: importing Assay's
modules changes nothing in the process.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import cast

# Assay runs offline: no model hub, no public-suffix list fetch. These must be
# in the environment before transformers, huggingface_hub or tldextract are
# imported; an explicit setting still wins.
OFFLINE_ENVIRONMENT: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "",
    "TOKENIZERS_PARALLELISM": "false",
    # Progress bars end up in worker logs as warnings; Assay logs its own timings.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}

# How long an idle OpenMP thread of torch spins before it sleeps (libgomp, iterations;
# read once, when torch first runs in parallel, so it too is set before torch loads).
# Measured on 2 cores, torch 2.13, one MiniLM call (ms) and SmolLM2 decoding (tok/s):
#
#   wait                      alone: ms  tok/s   another process busy on both cores: ms  tok/s
#   libgomp default (300k)         6.0   29.0                                      480    5.4
#   OMP_WAIT_POLICY=PASSIVE       12.1   17.1                                      9.4   17.1
#   GOMP_SPINCOUNT=10000           5.6   30.2                                     31.6    7.5
#
# The default's long spin collapses when processes share the cores; passive
# waiting halves single-process speed, since a decode step or a short forward pass
# is hundreds of operators microseconds apart. A short spin keeps the idle speed
# and degrades, without collapsing, under contention. An operator's own
# OMP_WAIT_POLICY or GOMP_SPINCOUNT wins (PASSIVE suits API and workers sharing
# few cores under sustained load).
THREADING_ENVIRONMENT: dict[str, str] = {"GOMP_SPINCOUNT": "10000"}


def configure_process(*, threading: bool = True) -> None:
    """Set Assay's offline and threading defaults in this process's environment.

    Idempotent; a variable already set (by the operator) is left as it is. Child
    processes inherit the result. ``threading=False`` leaves OpenMP's own waiting
    (benchmarks, whose naive sides and references run as a user's process would;
    Assay's own processes they start configure themselves).
    """
    for name, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    if threading and not ({"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & os.environ.keys()):
        os.environ.update(THREADING_ENVIRONMENT)


def _omp_pause_all() -> Callable[[int], int] | None:
    """libgomp's ``omp_pause_resource_all`` as torch loaded it; None before torch or without libgomp."""
    torch = sys.modules.get("torch")
    noload = getattr(os, "RTLD_NOLOAD", None)  # POSIX only
    if torch is None or torch.__file__ is None or noload is None:
        return None
    for name in (str(Path(torch.__file__).parent / "lib" / "libgomp.so.1"), "libgomp.so.1"):
        try:  # RTLD_NOLOAD: only the copy already in the process, never a second one
            lib = ctypes.CDLL(name, mode=noload | os.RTLD_LAZY)
        except OSError:
            continue
        pause = getattr(lib, "omp_pause_resource_all", None)
        if pause is not None:
            pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
            return cast(Callable[[int], int], pause)
    return None


_PAUSE: list[Callable[[int], int]] = []  # found once, after torch has loaded
_OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: omp_pause_soft


def release_openmp_threads() -> bool:
    """Give back the OpenMP threads this thread's torch calls started (libgomp, soft pause).

    libgomp keeps a pool of threads for every thread that ever ran a parallel
    region, and once the process holds more of them than there are cores it
    throttles every team's spinning. In a worker, check threads that had run
    torch slowed the decode thread from 29 to 17-19 tok/s on 2 cores. A thread
    done with torch for now calls this; its next parallel region starts a new
    pool (tens of microseconds). Returns whether the pool was released (False
    before torch is imported, without libgomp, or inside a parallel region).
    """
    if not _PAUSE:
        pause = _omp_pause_all()
        if pause is None:
            return False
        _PAUSE.append(pause)
    return _PAUSE[0](_OMP_PAUSE_SOFT) == 0
