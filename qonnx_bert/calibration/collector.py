"""Run the FP32 model in ONNX Runtime and stream its activations into range estimators.

The chosen intermediates are exposed as extra graph outputs. Each batch's values
go to the estimators with padding positions excluded (via the attention mask)
and are then dropped, so memory does not grow with the number of sequences.
Tensors are exposed in chunks (one inference pass per chunk) when a budget on
the bytes a batch may hold is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from qonnx_bert.calibration.estimators import NonFiniteError, RangeEstimator
from qonnx_bert.calibration.tensors import MASK_INPUT, TensorLayout
from qonnx_bert.errors import UsageError


@dataclass(frozen=True)
class Target:
    """One tensor to estimate: its layout and a factory for its estimator.

    ``per_channel`` estimators see (tokens, channels) rows; per-tensor ones see
    every valid element as one column.
    """

    layout: TensorLayout
    make: Callable[[], RangeEstimator]
    per_channel: bool = False
    label: str = ""


def valid_mask(layout: TensorLayout, shape: tuple[int, ...], mask: np.ndarray | None) -> np.ndarray | None:
    """Bool array broadcastable to ``shape``: False where any sequence axis is a padding position."""
    if mask is None or layout.mask_path or not layout.seq_axes:
        return None
    valid = np.ones((shape[0],) + (1,) * (len(shape) - 1), bool)
    for axis in layout.seq_axes:
        view = [1] * len(shape)
        view[0], view[axis] = mask.shape
        valid = valid & mask.astype(bool).reshape(view)
    return valid


def as_rows(x: np.ndarray, valid: np.ndarray | None, per_channel: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, C) rows and their (N,) validity for an estimator."""
    if per_channel:
        rows = x.reshape(-1, x.shape[-1])
        keep = None if valid is None else np.broadcast_to(valid, x.shape)[..., 0].reshape(-1)
        return rows, keep
    keep = None if valid is None else np.broadcast_to(valid, x.shape).reshape(-1)
    return x.reshape(-1, 1), keep


def _session(model: onnx.ModelProto, names: Sequence[str]) -> ort.InferenceSession:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    existing = {o.name for o in exposed.graph.output}
    for name in names:
        if name not in existing:
            exposed.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor as exported
    return ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _chunks(targets: list[Target], size: int | None) -> list[list[Target]]:
    size = size or len(targets)
    return [targets[i : i + size] for i in range(0, len(targets), size)]


def collect(
    model: onnx.ModelProto,
    targets: list[Target],
    batches: Callable[[], Iterable[dict[str, np.ndarray]]],
    *,
    num_batches: int | None = None,
    tensors_per_pass: int | None = None,
    progress: bool = True,
) -> dict[str, RangeEstimator]:
    """Feed every batch's activations to each target's estimator; returns them by tensor name.

    ``batches`` is called once per chunk of tensors and must yield the same feeds each time.
    """
    estimators = {t.layout.name + ("#channels" if t.per_channel else ""): t.make() for t in targets}
    chunks = _chunks(targets, tensors_per_pass)
    bar = tqdm(total=(num_batches or 0) * len(chunks), desc="calibrating", unit="batch", disable=not progress)
    for chunk in chunks:
        names = list(dict.fromkeys(t.layout.name for t in chunk))
        session = _session(model, names)
        inputs = {i.name for i in session.get_inputs()}
        for feeds in batches():
            values = dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in inputs}), strict=True))
            for target in chunk:
                _update(estimators, target, values[target.layout.name], feeds.get(MASK_INPUT))
            bar.update()
    bar.close()
    return estimators


def _update(estimators: dict, target: Target, x: np.ndarray, mask: np.ndarray | None) -> None:
    key = target.layout.name + ("#channels" if target.per_channel else "")
    rows, keep = as_rows(x, valid_mask(target.layout, x.shape, mask), target.per_channel)
    try:
        estimators[key].update(rows.astype(np.float32, copy=False), keep)
    except NonFiniteError:
        name = target.label or target.layout.name
        raise UsageError(f"tensor {name} holds NaN or Inf on the calibration data; check the model and its inputs") from None
