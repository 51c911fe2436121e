"""ONNX Runtime for the MiniLM forwards at inference, in place of torch on CPU.

``accelerate(model, outputs)`` takes a loaded Hugging Face model (a BERT-like
encoder, or one with a classification head) and returns a callable that
takes the same keyword tensors and returns the same output object (logits,
last hidden state, or every hidden state) from an ONNX Runtime session. The
callers' code stays as it is: ``model(**enc)[0]``,
``model(**enc).last_hidden_state`` and
``model(..., output_hidden_states=True).hidden_states`` all work.

The graph is exported once per set of weights and cached under
``ASSAY_CACHE_DIR/onnx/<sha256 of the weights, config and export spec>/``,
written to a temporary folder and renamed into place, so concurrent
processes and killed exports never leave a half-written model. Nothing is
exported at import: only when a check loads its model.

Every session is checked against torch on a fixed probe when it loads: a
graph whose outputs differ by more than ``MAX_ABS_DIFF`` is not used (torch
stays, with a warning). ``ASSAY_ONNX=false`` turns the whole path off, and
it is never used off CPU. Intra-op threads follow torch's
(``ASSAY_TORCH_THREADS``, applied before models load).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from evaluators.models import shared_model
from evaluators.settings import evaluator_settings

if TYPE_CHECKING:
    from evaluators.embeddings import SentenceEncoder

log = logging.getLogger(__name__)

Outputs = Literal["logits", "last_hidden_state", "hidden_states"]
"""What the exported graph returns: a head's logits, the encoder's last hidden state, or all of
its hidden states (embeddings first, as transformers' ``hidden_states``)."""

# Bumped when the export itself changes (opset, names, wrapper): old cache entries are not reused.
EXPORT_FORMAT = 1
OPSET = 17
MODEL_FILE = "model.onnx"
MAX_ABS_DIFF = 1e-4
"""Largest difference from torch accepted on the load-time probe (logits, hidden states)."""

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_PROBE = ("Jane Doe called 212-555-0199 from Lisbon about order 1042.", "hi")
_export_lock = threading.Lock()


def onnx_enabled(device: str = "cpu") -> bool:
    """Whether ONNX Runtime replaces torch for ``device`` (CPU only, ``ASSAY_ONNX`` on)."""
    return device == "cpu" and evaluator_settings().onnx


def accelerate(model: Any, outputs: Outputs, *, device: str = "cpu", tokenizer: Any = None) -> Any:
    """An ONNX Runtime stand-in for ``model`` returning ``outputs``, or ``model`` itself.

    ``model`` itself comes back when ONNX is off or ``device`` is not the CPU, when the
    export or the session fails, and when the session's probe outputs differ from torch's by
    more than ``MAX_ABS_DIFF``; the reason is logged. ``tokenizer`` builds the probe (token
    ids are synthesised without one).
    """
    if not onnx_enabled(device) or isinstance(model, OnnxModel):
        return model
    try:
        fast = OnnxModel.load(model, outputs)
        diff = fast.probe_difference(model, tokenizer)
    except Exception as exc:  # an optimisation: torch still answers
        log.warning("onnx: %s stays on torch: %s: %s", type(model).__name__, type(exc).__name__, exc)
        return model
    if diff > MAX_ABS_DIFF:
        log.warning(
            "onnx: %s stays on torch: the ONNX graph differs by %.2g (limit %g)",
            type(model).__name__,
            diff,
            MAX_ABS_DIFF,
        )
        return model
    return fast


def weights_digest(model: Any, outputs: Outputs) -> str:
    """sha256 of ``model``'s weights, class and config, and the export spec: the cache key."""
    import torch

    h = hashlib.sha256()
    h.update(f"assay-onnx {EXPORT_FORMAT} {OPSET} {outputs} {type(model).__qualname__}\n".encode())
    # Where the model was loaded from is not what it computes: the same weights anywhere share one entry.
    config = {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"\n{name} {t.dtype} {tuple(t.shape)}\n".encode())
        # Byte view of the storage: no copy of the weights.
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _cache_root() -> Path:
    return evaluator_settings().cache_dir / "onnx"


def _input_names(model: Any) -> tuple[str, ...]:
    accepted = inspect.signature(model.forward).parameters
    return tuple(n for n in _INPUTS if n in accepted)


def _output_names(model: Any, outputs: Outputs) -> tuple[str, ...]:
    if outputs == "hidden_states":
        return tuple(f"hidden_state_{i}" for i in range(int(model.config.num_hidden_layers) + 1))
    return (outputs,)


def export(model: Any, outputs: Outputs, folder: Path) -> Path:
    """Export ``model`` to ``folder/model.onnx`` (batch and sequence dimensions dynamic)."""
    import torch

    names = _input_names(model)
    out_names = _output_names(model, outputs)

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *args: Any) -> Any:
            kwargs = dict(zip(names, args, strict=True))
            if outputs == "logits":
                return self.inner(**kwargs).logits
            if outputs == "last_hidden_state":
                return self.inner(**kwargs).last_hidden_state
            return tuple(self.inner(**kwargs, output_hidden_states=True).hidden_states)

    # Traced with padding in the batch: transformers drops an all-ones attention mask in
    # Python, and a graph traced without padding would ignore the mask for good.
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0, 0]])
    example = {
        "input_ids": ids,
        "attention_mask": (ids != 0).long(),
        "token_type_ids": torch.zeros_like(ids),
    }
    graph = Graph().eval()  # the exporter restores the wrapper's mode onto the model afterwards
    was_training = model.training
    model.eval()
    dynamic = {n: {0: "batch", 1: "sequence"} for n in (*names, *out_names)}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter is deprecated in favour of torch.export, which needs
            # onnxscript and traces transformers' masks less reliably; it is exact here.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                tuple(example[n] for n in names),
                str(folder / MODEL_FILE),
                input_names=list(names),
                output_names=list(out_names),
                dynamic_axes=dynamic,
                opset_version=OPSET,
                dynamo=False,
            )
    finally:
        model.train(was_training)
    return folder / MODEL_FILE


def cached_export(model: Any, outputs: Outputs) -> Path:
    """The cached ONNX file for ``model``'s weights, exported now when absent."""
    root = _cache_root()
    final = root / weights_digest(model, outputs)
    if (final / MODEL_FILE).is_file():
        return final / MODEL_FILE
    with _export_lock:
        if (final / MODEL_FILE).is_file():
            return final / MODEL_FILE
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=root))
        try:
            export(model, outputs, tmp)
            meta = {"model": type(model).__name__, "outputs": outputs, "opset": OPSET}
            (tmp / "export.json").write_text(json.dumps(meta) + "\n", encoding="utf-8")
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / MODEL_FILE).is_file():  # another process won the race, or a real error
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("onnx: exported %s (%s) to %s", type(model).__name__, outputs, final)
    return final / MODEL_FILE


def session_options(threads: int | None = None) -> Any:
    """Session options for the CPU: torch's intra-op thread count, sequential, all graph fusions."""
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or int(torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No spinning: threads that spin between runs take the cores from tokenization and spaCy
    # (measured, bench/moderate.py, 1 client with the tagger: 19.6 req/s spinning, 28.8 not).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


class OnnxModel:
    """An ONNX Runtime session called like the Hugging Face model it was exported from."""

    def __init__(self, session: Any, torch_model: Any, outputs: Outputs, path: Path) -> None:
        self.session = session
        self.torch_model = torch_model
        """The model exported (its weights are the cache key; tests compare against it)."""
        self.config = torch_model.config
        self.outputs = outputs
        self.path = path
        self._inputs = tuple(i.name for i in session.get_inputs())
        self.max_rows = evaluator_settings().onnx_max_batch
        """Batches with more rows run on ``torch_model`` (0: every batch runs here)."""

    @classmethod
    def load(cls, model: Any, outputs: Outputs) -> OnnxModel:
        import onnxruntime as ort

        path = cached_export(model, outputs)
        session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
        return cls(session, model, outputs, path)

    def eval(self) -> OnnxModel:
        return self

    def __call__(self, **enc: Any) -> Any:
        """transformers' output object for ``enc`` (``output_hidden_states`` and the like are
        fixed by the export and ignored)."""
        import numpy as np
        import torch
        from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput

        ids = enc["input_ids"]
        if self.max_rows and ids.shape[0] > self.max_rows:
            # Measured on 2 cores: ONNX Runtime is 1.5-3x faster for one to a few texts, torch
            # faster on full micro-batches (32 rows); the same outputs either way.
            return self.torch_model(**enc)
        feeds: dict[str, Any] = {}
        for name in self._inputs:
            value = enc.get(name)
            if value is None:
                # As transformers defaults them: no padding, one segment.
                value = torch.ones_like(ids) if name == "attention_mask" else torch.zeros_like(ids)
            feeds[name] = np.ascontiguousarray(value.detach().cpu().numpy(), dtype=np.int64)
        rows = [torch.from_numpy(r) for r in self.session.run(None, feeds)]
        if self.outputs == "logits":
            return SequenceClassifierOutput(logits=rows[0])
        if self.outputs == "last_hidden_state":
            return BaseModelOutput(last_hidden_state=rows[0])
        return BaseModelOutput(last_hidden_state=rows[-1], hidden_states=tuple(rows))

    def probe_difference(self, model: Any, tokenizer: Any = None) -> float:
        """Largest absolute difference between this graph's outputs and ``model``'s on a probe."""
        import torch

        if tokenizer is not None:
            enc = dict(tokenizer(list(_PROBE), padding=True, truncation=True, return_tensors="pt"))
        else:
            ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0]])
            enc = {"input_ids": ids, "attention_mask": (ids != 0).long()}
        enc = {k: v for k, v in enc.items() if k in _INPUTS}
        with torch.inference_mode():
            if self.outputs == "hidden_states":
                ref = model(**enc, output_hidden_states=True).hidden_states
                got = self(**enc).hidden_states or ()
            else:
                ref = (getattr(model(**enc), self.outputs),)
                got = (getattr(self(**enc), self.outputs),)
        return max(float((a.float() - b).abs().max()) for a, b in zip(ref, got, strict=True))


def sentence_encoder(device: str = "auto") -> SentenceEncoder:
    """The process's MiniLM sentence encoder (``embeddings.sentence_encoder``), its forward on
    ONNX Runtime where that is on: same vectors, same tokenizer and lock."""
    from evaluators.embeddings import MINILM_ENGINE, minilm_path
    from evaluators.embeddings import sentence_encoder as torch_encoder

    base = torch_encoder(device)
    if not onnx_enabled(base.device):
        return base

    def load() -> SentenceEncoder:
        fast = accelerate(base.model, "last_hidden_state", device=base.device, tokenizer=base.tokenizer)
        return base if fast is base.model else replace(base, model=fast)

    return shared_model(f"{MINILM_ENGINE}:onnx:{minilm_path()}:{base.device}", load)
