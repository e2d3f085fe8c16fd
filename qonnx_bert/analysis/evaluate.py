"""Run an ONNX model over a GLUE split in ONNX Runtime and score it.

A classifier is scored with the task's GLUE metric. A sentence-embedding model
(``qonnx export --task feature-extraction``) is scored zero-shot on STS-B as the
MTEB benchmark does: Spearman correlation between the cosine similarity of the two
sentences' embeddings and the gold scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.modelinfo import EMBEDDING
from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.inputs.encode import Encoder, length_batches
from qonnx_bert.inputs.glue import GlueSplit
from qonnx_bert.inputs.glue.metrics import pearson, predictions_from_logits, score, spearman


@dataclass(frozen=True)
class EvalResult:
    task: str
    num_examples: int
    metrics: dict[str, float]
    logits: np.ndarray  # a classifier's logits; an embedding model's cosine similarities


def shipped_sts_dir() -> Path:
    """The GLUE-layout folder of the shipped STS-B sample (300 dev pairs, CC BY-SA 4.0: see its LICENSE.md)."""
    return Path(str(resources.files("qonnx_bert").joinpath("data", "sts-b")))


def first_output(
    session: ort.InferenceSession,
    encoder: Encoder,
    texts_a: list[str],
    texts_b: list[str] | None,
    *,
    batch_size: int = 16,
    desc: str = "eval",
    progress: bool = True,
) -> np.ndarray:
    """The model's first output for every sequence, in input order (batches are length-bucketed)."""
    rows = encoder.static_batch or batch_size
    lengths = encoder.lengths(texts_a, texts_b)
    inputs = {i.name for i in session.get_inputs()}
    name = session.get_outputs()[0].name
    out = None
    for idx in tqdm(list(length_batches(lengths, rows)), desc=desc, unit="batch", disable=not progress):
        a = [texts_a[i] for i in idx]
        b = None if texts_b is None else [texts_b[i] for i in idx]
        feeds = {k: v for k, v in encoder.feeds(a, b).items() if k in inputs}
        got = session.run([name], feeds)[0][: len(idx)]
        if out is None:
            out = np.zeros((len(texts_a), *got.shape[1:]), got.dtype)
        out[idx] = got
    return out


def cosine_similarities(
    session: ort.InferenceSession, encoder: Encoder, split: GlueSplit, *, batch_size: int = 16, progress: bool = True
) -> np.ndarray:
    """Cosine similarity of the two sentences of each pair, each sentence embedded on its own."""
    if split.texts_b is None or split.task.labels is not None:
        raise UsageError(
            f"an embedding model is scored zero-shot on sentence similarity; use `task=stsb`, not {split.task.name}"
        )
    a, b = (
        first_output(session, encoder, texts, None, batch_size=batch_size, desc=f"embed {part}", progress=progress)
        for part, texts in (("sentence1", split.texts_a), ("sentence2", split.texts_b))
    )
    return np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def similarity_metrics(cosines: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """MTEB's STS scores: cosine Spearman (the headline, x100 as ``score``) and Pearson."""
    rho = spearman(cosines, gold)
    return {"cosine_spearman": rho, "cosine_pearson": pearson(cosines, gold), "score": 100.0 * rho}


def evaluate(
    model: onnx.ModelProto,
    split: GlueSplit,
    *,
    batch_size: int = 16,
    progress: bool = True,
    session: ort.InferenceSession | None = None,
) -> EvalResult:
    """The metric of ``model`` on ``split``, run by ``session`` (default: the CPU provider)."""
    session = cpu_session(model) if session is None else session
    encoder = Encoder.from_model(model)
    if encoder.info.head == EMBEDDING:
        cosines = cosine_similarities(session, encoder, split, batch_size=batch_size, progress=progress)
        return EvalResult(split.task.name, len(split), similarity_metrics(cosines, split.labels), cosines)
    desc = f"eval {split.task.name}"
    logits = first_output(
        session, encoder, split.texts_a, split.texts_b, batch_size=batch_size, desc=desc, progress=progress
    )
    metrics = score(split.task, predictions_from_logits(split.task, logits), split.labels)
    return EvalResult(split.task.name, len(split), metrics, logits)
