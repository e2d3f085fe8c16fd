"""Run an ONNX model over a GLUE split in ONNX Runtime and score it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.inputs.encode import Encoder, length_batches
from qonnx_bert.inputs.glue import GlueSplit
from qonnx_bert.inputs.glue.metrics import predictions_from_logits, score


@dataclass(frozen=True)
class EvalResult:
    task: str
    num_examples: int
    metrics: dict[str, float]
    logits: np.ndarray


def predict_logits(
    session: ort.InferenceSession, encoder: Encoder, split: GlueSplit, *, batch_size: int = 16, progress: bool = True
) -> np.ndarray:
    """Logits for every example, in the split's order (batches are length-bucketed)."""
    rows = encoder.static_batch or batch_size
    lengths = encoder.lengths(split.texts_a, split.texts_b)
    logits = np.zeros((len(split), encoder.info.num_labels), np.float32)
    inputs = {i.name for i in session.get_inputs()}
    for idx in tqdm(
        list(length_batches(lengths, rows)), desc=f"eval {split.task.name}", unit="batch", disable=not progress
    ):
        a = [split.texts_a[i] for i in idx]
        b = None if split.texts_b is None else [split.texts_b[i] for i in idx]
        feeds = {k: v for k, v in encoder.feeds(a, b).items() if k in inputs}
        logits[idx] = session.run(None, feeds)[0][: len(idx)]
    return logits


def evaluate(
    model: onnx.ModelProto,
    split: GlueSplit,
    *,
    batch_size: int = 16,
    progress: bool = True,
    session: ort.InferenceSession | None = None,
) -> EvalResult:
    """The task metric of ``model`` on ``split``, run by ``session`` (default: the CPU provider)."""
    session = cpu_session(model) if session is None else session
    logits = predict_logits(session, Encoder.from_model(model), split, batch_size=batch_size, progress=progress)
    metrics = score(split.task, predictions_from_logits(split.task, logits), split.labels)
    return EvalResult(split.task.name, len(split), metrics, logits)
