"""The hallucination check's NLI engine: finding, loading and running an entailment classifier."""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluators.batched_encode import encode_batched
from evaluators.build import BUILD_COMMAND, recipes
from evaluators.errors import ModelMissingError
from evaluators.settings import PROJECT_ROOT, evaluator_settings


@dataclass
class NliModel:
    """A loaded NLI classifier plus what scoring needs beside it."""

    model: Any
    tokenizer: Any
    device: str
    entailment: int
    engine: str
    max_length: int
    precision: str = "fp32"
    lock: threading.Lock = field(default_factory=threading.Lock)


# What a trained NLI folder says about itself (written by evaluators.nli_training).
NLI_METADATA = "assay-model.json"


def _nli_missing(detail: str) -> ModelMissingError:
    return ModelMissingError(detail, field="nli_model")


def resolve_nli_folder(value: str) -> Path:
    """The folder ``nli_model`` names; ``ModelMissingError`` listing the places tried."""
    path = Path(value).expanduser()
    tried = [path] if path.is_absolute() else [PROJECT_ROOT / path, evaluator_settings().model_dir / path]
    for candidate in tried:
        if (candidate / "config.json").is_file():
            return candidate.resolve()
    hint = (
        f"run `{BUILD_COMMAND}` to build it"
        if value in recipes()
        else "put a transformers sequence-classification model with an entailment label there"
    )
    raise _nli_missing(
        f"NLI model folder {value!r} not found or lacks config.json (tried {', '.join(map(str, tried))}); "
        + hint
    )


def int8_recommended(folder: Path) -> bool:
    """Whether the model's build found int8 close enough to fp32 (``quantize_int8: auto``)."""
    try:
        meta = json.loads((folder / NLI_METADATA).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(isinstance(meta, dict) and meta.get("int8", {}).get("recommended"))


def load_nli(
    folder: Path, device: str, *, int8: bool = False, max_length: int = 512, name: str | None = None
) -> NliModel:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForSequenceClassification.from_pretrained(str(folder)).to(device).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise _nli_missing(f"cannot load the NLI model in {folder}: {exc}") from exc
    labels = {int(i): str(name) for i, name in (model.config.id2label or {}).items()}
    # "entailment" or "ENTAILMENT", but not "not_entailment".
    entail = [i for i, name in labels.items() if name.lower().startswith("entail")]
    if len(entail) != 1:
        raise _nli_missing(
            f"NLI model in {folder} needs exactly one entailment label in config.id2label "
            f"(it has {sorted(labels.values())})"
        )
    precision = "fp32"
    if int8 and device == "cpu":
        import torch

        with warnings.catch_warnings():
            # torch.ao eager quantization is deprecated in favour of torchao, not installed here.
            warnings.simplefilter("ignore")
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        precision = "int8"
    limit = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    return NliModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        entailment=entail[0],
        engine=f"nli:{name or folder.name}",
        max_length=min(limit, max_length, 512),
        precision=precision,
    )


def entailment_probs(nli: NliModel, pairs: Sequence[tuple[str, str]], batch_size: int) -> list[float]:
    """P(entailment) per (premise, hypothesis) pair, in order; the premise is cut, never the claim."""
    import torch

    def forward(enc: Any, _batch: list[tuple[str, str]]) -> list[float]:
        logits = nli.model(**enc).logits
        probs: list[float] = torch.softmax(logits.float(), dim=-1)[:, nli.entailment].cpu().tolist()
        return probs

    return encode_batched(
        pairs,
        nli.tokenizer,
        forward,
        batch_size=batch_size,
        max_length=nli.max_length,
        kind="pair",
        device=nli.device,
        lock=nli.lock,
    )
