"""A small named-entity tagger for PII: fine-tuned MiniLM, a window MLP head, BIO tags.

spaCy's news-trained pipelines miss many names and places in short, informal
text (chat, tweets, support tickets). This tagger is trained on the TRAIN
splits of WNUT-17 and the Broad Twitter Corpus (both CC BY 4.0, carried under
``data/ner/``) for PERSON, LOCATION and ORGANIZATION.

Why this shape: MiniLM's word vectors (the mean of its last two layers, first
word piece per word) feed a small head that also sees the previous and next
words. MiniLM's top two layers are fine-tuned with the head; the bottom four
stay frozen, so their output is computed once per training sentence (a full
fine-tune costs several times the build time on two CPU cores). Against a
frozen encoder under the same head, the tagger alone went from 0.70 / 0.57 to
0.75 / 0.62 PERSON / LOCATION exact span F1 on the held-out test splits
(``bench/pii_quality.py``). The bundled all-MiniLM-L6-v2 is uncased, so the head also gets
word-shape features (capitalisation, digits, hashtag...), the strongest cue
for names in English.

@-mentions are handles, not names: the two corpora disagree on them (BTC tags
them PER or ORG, WNUT-17 mostly O), so they are masked out of training and
never tagged.

The build folder holds the fine-tuned encoder (``encoder/``, transformers
format with its tokenizer) and the head; a folder from an older build without
``encoder/`` runs the head on the frozen, installed MiniLM. Nothing downloads.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluators.batched_encode import encode_batched
from evaluators.errors import ModelMissingError

if TYPE_CHECKING:
    import torch

ENTITY_TYPES: tuple[str, ...] = ("PERSON", "LOCATION", "ORGANIZATION")
LABELS: tuple[str, ...] = ("O", *(f"{p}-{t}" for t in ENTITY_TYPES for p in ("B", "I")))
HEAD_FILE = "head.safetensors"
CONFIG_FILE = "ner_config.json"
MODEL_NAME = "ner-minilm"
BUILD_COMMAND = f"assay models build {MODEL_NAME}"

# Corpus tags -> entity types. WNUT-17's group (teams, bands, parties) is an organisation.
_TAG_MAP = {
    "PER": "PERSON",
    "person": "PERSON",
    "LOC": "LOCATION",
    "location": "LOCATION",
    "ORG": "ORGANIZATION",
    "corporation": "ORGANIZATION",
    "group": "ORGANIZATION",
}
IGNORE = -100
_MAX_PIECES = 128
_URL = re.compile(r"^(https?://|www\.)", re.IGNORECASE)
N_SHAPE = 10


def read_conll(path: Path) -> list[list[tuple[str, str]]]:
    """Sentences of (token, tag) from a CoNLL file (tab or space separated, blank line between)."""
    sentences: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if current:
                sentences.append(current)
                current = []
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        current.append((parts[0], parts[-1].strip() or "O"))
    if current:
        sentences.append(current)
    return sentences


def is_handle(word: str) -> bool:
    return word.startswith("@") and len(word) > 1


def merge_handles(sentence: Sequence[tuple[str, str]]) -> list[tuple[str, str | None]]:
    """Join a lone ``@`` with the next token, and mark handles as unlabelled (None)."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(sentence):
        word, tag = sentence[i]
        if word == "@" and i + 1 < len(sentence):
            out.append(("@" + sentence[i + 1][0], None))
            i += 2
            continue
        out.append((word, None if is_handle(word) else tag))
        i += 1
    return out


def bio_labels(tags: Sequence[str | None]) -> list[int]:
    """Corpus tags -> indices into ``LABELS`` (IGNORE for handles); unknown types become O."""
    out: list[int] = []
    prev: str | None = None
    for tag in tags:
        if tag is None:
            out.append(IGNORE)
            prev = None
            continue
        kind = _TAG_MAP.get(tag[2:]) if tag[:2] in ("B-", "I-") else None
        if kind is None:
            out.append(0)
            prev = None
            continue
        prefix = "I" if tag.startswith("I-") and prev == kind else "B"
        out.append(LABELS.index(f"{prefix}-{kind}"))
        prev = kind
    return out


def shape_features(words: Sequence[str]) -> list[list[float]]:
    """Per-word casing and form cues the uncased encoder cannot see."""
    feats = []
    for i, w in enumerate(words):
        core = w.lstrip("#")
        feats.append(
            [
                float(core[:1].isupper()),
                float(core.isupper() and len(core) > 1),
                float(core.islower()),
                float(any(c.isdigit() for c in core)),
                float(w.startswith("#") and len(w) > 1),
                float(bool(_URL.match(w))),
                float(not any(c.isalnum() for c in w)),
                float(i == 0 or words[i - 1] in {".", "!", "?", ":", '"'}),
                float(core[:1].isupper() and core[1:].islower()),
                1.0,  # bias column; also marks a real word vs the window's padding
            ]
        )
    return feats


@dataclass
class WordEncoder:
    """MiniLM run over pre-split words; one vector per word (its first word piece)."""

    model: Any
    tokenizer: Any
    batch_size: int = 32
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, sentences: Sequence[Sequence[str]]) -> list[torch.Tensor]:
        """``(len(words), dim + N_SHAPE)`` float32 tensors, one per sentence, in order."""
        import torch

        def forward(enc: Any, batch: list[Sequence[str]]) -> list[torch.Tensor]:
            states = self.model(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                output_hidden_states=True,
            ).hidden_states
            # The last layers are tuned for sentence similarity; averaging in the one
            # below keeps more word-level (lexical) information.
            hidden = ((states[-1] + states[-2]) / 2).float()
            rows = []
            for b, words in enumerate(batch):
                vecs = torch.zeros((len(words), self.dim))
                seen: set[int] = set()
                for pos, wid in enumerate(enc.word_ids(b)):
                    if wid is not None and wid not in seen:
                        seen.add(wid)
                        vecs[wid] = hidden[b, pos]
                # Words cut off by truncation keep a zero vector; their shape still counts.
                shape = torch.tensor(shape_features(words), dtype=torch.float32).reshape(len(words), N_SHAPE)
                rows.append(torch.cat([vecs, shape], dim=1))
            return rows

        return encode_batched(
            sentences,
            self.tokenizer,
            forward,
            batch_size=self.batch_size,
            max_length=_MAX_PIECES,
            kind="words",
            lock=self.lock,
        )


def _window(x: torch.Tensor) -> torch.Tensor:
    """Concatenate each word's features with its neighbours' (zeros past the edges)."""
    import torch

    pad = torch.zeros((1, x.shape[1]), dtype=x.dtype)
    prev = torch.cat([pad, x[:-1]], dim=0)
    nxt = torch.cat([x[1:], pad], dim=0)
    return torch.cat([prev, x, nxt], dim=1)


def _make_head(in_dim: int, hidden: int, dropout: float) -> Any:
    import torch

    return torch.nn.Sequential(
        torch.nn.Dropout(dropout),
        torch.nn.Linear(in_dim * 3, hidden),
        torch.nn.GELU(),
        torch.nn.Dropout(dropout),
        torch.nn.Linear(hidden, len(LABELS)),
    )


@dataclass(frozen=True)
class Entity:
    label: str
    start: int
    """Index of the first word."""
    end: int
    """Index after the last word."""
    score: float


def decode(probs: torch.Tensor, words: Sequence[str]) -> list[Entity]:
    """Greedy BIO decoding; an I- without a matching B- starts an entity. Score: mean of the
    probability mass on the entity's type over its words."""
    entities: list[Entity] = []
    labels = probs.argmax(dim=1).tolist()
    cur: list[Any] | None = None
    for i, lab in enumerate(labels):
        name = LABELS[lab]
        if is_handle(words[i]) or name == "O":
            if cur:
                entities.append(Entity(cur[0], cur[1], i, sum(cur[2]) / len(cur[2])))
            cur = None
            continue
        prefix, kind = name.split("-", 1)
        mass = float(probs[i, LABELS.index(f"B-{kind}")] + probs[i, LABELS.index(f"I-{kind}")])
        if prefix == "I" and cur is not None and cur[0] == kind:
            cur[2].append(mass)
            continue
        if cur:
            entities.append(Entity(cur[0], cur[1], i, sum(cur[2]) / len(cur[2])))
        cur = [kind, i, [mass]]
    if cur:
        entities.append(Entity(cur[0], cur[1], len(labels), sum(cur[2]) / len(cur[2])))
    return entities


@dataclass
class NerTagger:
    """The trained head on MiniLM word features."""

    encoder: WordEncoder
    head: Any
    config: Mapping[str, Any]

    def tag(self, sentences: Sequence[Sequence[str]]) -> list[list[Entity]]:
        import torch

        feats = self.encoder.encode(sentences)
        out: list[list[Entity]] = []
        with torch.inference_mode():
            for words, x in zip(sentences, feats, strict=True):
                if not words:
                    out.append([])
                    continue
                probs = torch.softmax(self.head(_window(x)), dim=1)
                out.append(decode(probs, words))
        return out


ENCODER_DIR = "encoder"


def _load_minilm(path: Path | None = None) -> tuple[Any, Any]:
    """MiniLM and its tokenizer: the fine-tuned copy at ``path``, else the installed package's."""
    from transformers import AutoModel, AutoTokenizer

    from evaluators.embeddings import minilm_path

    path = path or minilm_path()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModel.from_pretrained(str(path)).eval()
    except (OSError, ValueError) as exc:
        raise ModelMissingError(f"cannot load the MiniLM encoder from {path}: {exc}") from exc
    return model, tokenizer


def load_tagger(folder: Path) -> NerTagger:
    """Load a built tagger; ``ModelMissingError`` naming the build command when it is absent."""
    from safetensors.torch import load_file

    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file() or not (folder / HEAD_FILE).is_file():
        raise ModelMissingError(
            f"the NER model folder {folder} is missing or incomplete (no {CONFIG_FILE} or {HEAD_FILE}); "
            f"run `{BUILD_COMMAND}` (about 2 minutes on CPU, offline) or point ner_model at a built folder",
            field="ner_model",
        )
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    encoder_dir = folder / ENCODER_DIR
    model, tokenizer = _load_minilm(encoder_dir if (encoder_dir / "config.json").is_file() else None)
    head = _make_head(int(config["in_dim"]), int(config["hidden"]), 0.0)
    head.load_state_dict(load_file(str(folder / HEAD_FILE)))
    head.eval()
    return NerTagger(encoder=WordEncoder(model=model, tokenizer=tokenizer), head=head, config=config)
