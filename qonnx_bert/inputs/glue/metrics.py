"""The metrics of the GLUE paper, in plain NumPy.

Written here rather than taken from scikit-learn or ``evaluate`` so that scoring a
quantized model needs no extra dependency and no hub download. Degenerate inputs
give a number, not NaN: a constant prediction scores MCC 0 (as scikit-learn does)
and Pearson/Spearman 0 (where SciPy gives NaN), so a collapsed model reads as "no
correlation" in a results table. Empty input is an error.
"""

from __future__ import annotations

import numpy as np

from qonnx_bert.core.errors import UsageError
from qonnx_bert.inputs.glue.tasks import TaskSpec


def _pair(preds, labels, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(preds, dtype=dtype).ravel()
    y = np.asarray(labels, dtype=dtype).ravel()
    if p.size == 0 or y.size == 0:
        raise UsageError("no examples to score; check the data split and `limit`")
    if p.shape != y.shape:
        raise ValueError(f"{p.size} predictions for {y.size} labels")
    return p, y


def accuracy(preds, labels) -> float:
    """Fraction of predictions equal to the label."""
    p, y = _pair(preds, labels)
    return float(np.mean(p == y))


def f1_binary(preds, labels) -> float:
    """F1 of the positive class 1; 0 when there is no positive prediction or label."""
    p, y = _pair(preds, labels)
    tp = np.sum((p == 1) & (y == 1))
    fp_fn = np.sum((p == 1) != (y == 1))
    denom = 2 * tp + fp_fn
    return float(2 * tp / denom) if denom else 0.0


def matthews_corrcoef(preds, labels) -> float:
    """Matthews correlation (multiclass form of Gorodkin 2004); 0 when undefined."""
    p, y = _pair(preds, labels)
    classes, idx = np.unique(np.concatenate([y, p]), return_inverse=True)
    k = len(classes)
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (idx[: y.size], idx[y.size :]), 1.0)
    t, q, c, s = cm.sum(axis=1), cm.sum(axis=0), np.trace(cm), cm.sum()
    denom = np.sqrt((s * s - q @ q) * (s * s - t @ t))
    return float((c * s - t @ q) / denom) if denom > 0 else 0.0


def pearson(preds, labels) -> float:
    """Pearson correlation; 0 when either side is constant."""
    x, y = _pair(preds, labels, np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x @ x) * (y @ y))
    return float(np.clip((x @ y) / denom, -1.0, 1.0)) if denom > 0 else 0.0


def _rank(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the average of the ranks they span."""
    order = np.argsort(x, kind="stable")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def spearman(preds, labels) -> float:
    """Spearman rank correlation: Pearson of the tie-averaged ranks."""
    x, y = _pair(preds, labels, np.float64)
    return pearson(_rank(x), _rank(y))


def score(task: TaskSpec, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics (fractions) and ``score``: its headline number x100, as in the paper."""
    if task.metric == "mcc":
        out = {"mcc": matthews_corrcoef(preds, labels)}
    elif task.metric == "accuracy":
        out = {"accuracy": accuracy(preds, labels)}
    elif task.metric == "accuracy_f1":
        out = {"accuracy": accuracy(preds, labels), "f1": f1_binary(preds, labels)}
    elif task.metric == "pearson_spearman":
        out = {"pearson": pearson(preds, labels), "spearman": spearman(preds, labels)}
    else:
        raise ValueError(f"unknown metric {task.metric!r} for task {task.name}")
    return {**out, "score": 100.0 * float(np.mean(list(out.values())))}


def predictions_from_logits(task: TaskSpec, logits) -> np.ndarray:
    """Class indices (argmax) or, for a regression task, the single output column."""
    z = np.asarray(logits)
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2 or z.shape[1] != task.num_labels:
        raise UsageError(
            f"the model gives {z.shape[-1]} outputs per example but {task.name} has {task.num_labels}; "
            f"use a model fine-tuned for {task.name}"
        )
    return z[:, 0].astype(np.float32) if task.labels is None else np.argmax(z, axis=1).astype(np.int64)
