"""Loading the toxicity check's Detoxify tier: a local checkpoint folder, or a cached Detoxify name.

Detoxify's own loading path and checkpoint format are kept (``Detoxify(checkpoint=...)``);
what is here finds the folder, checks it holds what Detoxify needs and names what is
missing (with the command that makes it), and never downloads: a published Detoxify
name loads only when the torch hub and Hugging Face caches already hold it.
"""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluators.errors import ModelMissingError
from evaluators.onnx_models import accelerate
from evaluators.settings import PROJECT_ROOT, evaluator_settings

if TYPE_CHECKING:
    from evaluators.checks.toxicity import DetoxifyTier

TRAIN_COMMAND = (
    "assay models build (for the default abuse-minilm checkpoint), or "
    "assay models train-toxicity --data train.csv --out .cache/models/toxicity-minilm (for your own data)"
)

# Detoxify's published checkpoints and the Hugging Face base each one needs
# (detoxify.detoxify.MODEL_URLS holds the download addresses).
DETOXIFY_NAMES: dict[str, str] = {
    "original": "bert-base-uncased",
    "unbiased": "roberta-base",
    "multilingual": "xlm-roberta-base",
    "original-small": "albert-base-v2",
    "unbiased-small": "albert-base-v2",
}

CHECKPOINT_FILE = "model.ckpt"
_TOKENIZER_VOCAB = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model")


@dataclass
class _Classifier:
    """A loaded Detoxify object plus what scoring needs beside it."""

    detox: Any
    device: str
    engine: str
    # Fast tokenizers raise "Already borrowed" when threads share one.
    tokenizer_lock: threading.Lock
    model: Any
    """What scores: the ONNX Runtime graph of ``detox.model`` where it is used, else the model."""


def _missing(detail: str, **extra: Any) -> ModelMissingError:
    return ModelMissingError(detail, field="detoxify.checkpoint", **extra)


def resolve_checkpoint(value: str) -> Path | None:
    """The folder a ``checkpoint`` value names, or None for a Detoxify name.

    Raises ``ModelMissingError`` listing the places tried when no folder exists.
    """
    if value in DETOXIFY_NAMES:
        return None
    path = Path(value).expanduser()
    tried = [path] if path.is_absolute() else [PROJECT_ROOT / path, evaluator_settings().model_dir / path]
    for candidate in tried:
        if candidate.exists():
            # A path to model.ckpt itself names its folder.
            return (candidate.parent if candidate.is_file() else candidate).resolve()
    raise _missing(
        f"toxicity checkpoint folder {value!r} not found (tried {', '.join(map(str, tried))}); "
        f"create it with `{TRAIN_COMMAND}` and point detoxify.checkpoint at it",
        checkpoint=value,
    )


def _missing_files(folder: Path) -> list[str]:
    missing = [
        n for n in (CHECKPOINT_FILE, "config.json", "tokenizer_config.json") if not (folder / n).is_file()
    ]
    if not any((folder / n).is_file() for n in _TOKENIZER_VOCAB):
        missing.append(" or ".join(_TOKENIZER_VOCAB))
    return missing


def _checkpoint_source(folder: Path) -> str | io.BytesIO:
    """What to hand ``Detoxify(checkpoint=...)`` for ``folder``.

    Detoxify resolves ``arch.args.model_type`` with ``from_pretrained`` before
    it looks at ``huggingface_config_path``, so it must name a folder on this
    machine. A folder that moved (or a checkpoint trained elsewhere) gets its
    dict re-pointed here and passed in memory; Detoxify still does the load.
    """
    import torch

    ckpt = folder / CHECKPOINT_FILE
    try:
        # Same trust as Detoxify's own torch.load(weights_only=False) of this file.
        loaded = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise _missing(f"cannot read {ckpt}: {exc}", checkpoint=str(folder)) from exc
    if not isinstance(loaded, dict) or "config" not in loaded or "state_dict" not in loaded:
        keys = sorted(loaded) if isinstance(loaded, dict) else type(loaded).__name__
        raise _missing(
            f"{ckpt} is not a Detoxify checkpoint: it needs 'config' and 'state_dict' entries "
            f"(found {keys}); re-create it with `{TRAIN_COMMAND}`",
            checkpoint=str(folder),
        )
    needs = (
        "Detoxify needs config.arch.args (model_type, model_name, tokenizer_name, "
        "num_classes) and config.dataset.args.classes"
    )
    try:
        args = loaded["config"]["arch"]["args"]
        classes = loaded["config"]["dataset"]["args"]["classes"]
    except (KeyError, TypeError) as exc:
        raise _missing(f"{ckpt} config lacks {exc}: {needs}", checkpoint=str(folder)) from exc
    absent = [k for k in ("model_type", "model_name", "tokenizer_name", "num_classes") if k not in args]
    if absent:
        raise _missing(f"{ckpt} config.arch.args lacks {', '.join(absent)}: {needs}", checkpoint=str(folder))
    if len(classes) != args["num_classes"]:
        raise _missing(
            f"{ckpt} lists {len(classes)} classes but num_classes is {args['num_classes']}",
            checkpoint=str(folder),
        )
    model_type = Path(str(args["model_type"]))
    try:
        in_place = model_type.is_dir() and model_type.resolve() == folder
    except OSError:  # the path a copied build cache was trained at may be unreadable here
        in_place = False
    if in_place:
        return str(ckpt)
    args["model_type"] = str(folder)
    buf = io.BytesIO()
    torch.save(loaded, buf)
    buf.seek(0)
    return buf


def _load_named(name: str, device: str) -> Any:
    import torch
    from detoxify import Detoxify
    from detoxify.detoxify import MODEL_URLS

    filename = MODEL_URLS[name].rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    base = DETOXIFY_NAMES[name]
    have_base = False
    if cached.is_file():
        from huggingface_hub import try_to_load_from_cache

        have_base = isinstance(try_to_load_from_cache(base, "config.json"), str)
    if not (cached.is_file() and have_base):
        raise _missing(
            f"Detoxify checkpoint {name!r} cannot be fetched offline: it downloads from GitHub "
            f"releases ({filename}) plus {base} from the Hugging Face Hub, and Assay does not "
            f"download models at run time. Train a local one with `{TRAIN_COMMAND}` and set "
            "detoxify.checkpoint to that folder, or pre-seed the torch hub and Hugging Face "
            "caches.",
            checkpoint=name,
        )
    return Detoxify(model_type=name, device=device)


def _load_classifier(tier: DetoxifyTier, folder: Path | None, device: str) -> _Classifier:
    import torch

    if folder is None:
        detox = _load_named(tier.checkpoint, device)
        engine = f"detoxify:{tier.checkpoint}"
    else:
        missing = _missing_files(folder)
        if missing:
            raise _missing(
                f"toxicity checkpoint folder {folder} lacks {', '.join(missing)}; "
                f"re-create it with `{TRAIN_COMMAND}`",
                checkpoint=str(folder),
                missing=missing,
            )
        from detoxify import Detoxify

        source = _checkpoint_source(folder)
        try:
            detox = Detoxify(checkpoint=source, device=device, huggingface_config_path=str(folder))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise _missing(
                f"cannot load the Detoxify checkpoint in {folder}: {exc}", checkpoint=str(folder)
            ) from exc
        # Named as the policy names it: the folder itself may be a build-cache entry
        # (abuse-minilm links to ~/.cache/assay/models/abuse-minilm/KEY).
        named = Path(tier.checkpoint)
        engine = f"detoxify:{named.parent.name if named.name == CHECKPOINT_FILE else named.name}"
    detox.model.eval()
    if tier.quantize_int8 and device == "cpu":
        with warnings.catch_warnings():
            # torch.ao eager quantization is deprecated in favour of torchao, not installed here.
            warnings.simplefilter("ignore")
            detox.model = torch.ao.quantization.quantize_dynamic(
                detox.model, {torch.nn.Linear}, dtype=torch.qint8
            )
        model = detox.model
    else:
        # fp32 only: the ONNX graph must score as the fp32 model does (checked when it loads).
        model = accelerate(detox.model, "logits", device=device, tokenizer=detox.tokenizer)
    return _Classifier(
        detox=detox, device=device, engine=engine, tokenizer_lock=threading.Lock(), model=model
    )
