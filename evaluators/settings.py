"""Settings read from the environment once, as typed dataclasses.

Every layer (evaluators, workers, service) has its own dataclass; this module
holds the shared parsing helpers and the evaluators' own settings.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from evaluators.errors import ConfigError

T = TypeVar("T")

# Where policies/, suites/ and the default caches live: the checkout, or
# ASSAY_HOME when the package is installed elsewhere (the container images).
PROJECT_ROOT = Path(os.environ.get("ASSAY_HOME") or Path(__file__).resolve().parent.parent)


def _coerce(name: str, raw: str, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw == "":
            return None
        kind = args[0]
    try:
        if kind is bool:
            if raw.lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind is Path:
            return Path(raw).expanduser()
        if kind in (int, float, str):
            return kind(raw)
        if typing.get_origin(kind) is tuple:
            return tuple(p.strip() for p in raw.split(",") if p.strip())
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}={raw!r} is not a valid {kind}") from exc
    raise ConfigError(f"unsupported settings type {kind!r} for {name}")


def from_env(cls: type[T], prefix: str = "ASSAY_") -> T:
    """Build dataclass ``cls`` from ``{prefix}{FIELD}`` variables, falling back to defaults."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        env_name = f"{prefix}{field.name.upper()}"
        raw = os.environ.get(env_name)
        if raw is not None:
            values[field.name] = _coerce(env_name, raw, hints[field.name])
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class EvaluatorSettings:
    """Where the checks find their models and how they run them."""

    model_dir: Path = PROJECT_ROOT / ".cache" / "models"
    """Folder for converted and trained models (ASSAY_MODEL_DIR)."""

    device: str = "auto"
    """Torch device for classifier checks: auto, cpu or cuda (ASSAY_DEVICE)."""

    torch_threads: int = 0
    """Intra-op threads for torch on CPU; 0 keeps torch's default (ASSAY_TORCH_THREADS)."""

    cache_dir: Path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "assay"
    """Build cache shared by every checkout on this machine: trained default models live here,
    keyed by a hash of their data, code and configuration (ASSAY_CACHE_DIR)."""


@lru_cache(maxsize=1)
def evaluator_settings() -> EvaluatorSettings:
    """The evaluators' settings, read once per process."""
    return from_env(EvaluatorSettings)


def resolve_device(device: str) -> str:
    """Turn ``auto`` into ``cuda`` when a GPU is present, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def apply_torch_threads(settings: EvaluatorSettings | None = None, *, default: int = 0) -> int:
    """Apply ``ASSAY_TORCH_THREADS`` (else ``default``) to this process; 0 leaves torch's own.

    Returns the thread count torch now uses.
    """
    settings = settings or evaluator_settings()
    import torch

    threads = settings.torch_threads or default
    if threads > 0:
        torch.set_num_threads(threads)
    return int(torch.get_num_threads())
