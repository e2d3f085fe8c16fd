"""Run the FP32 model in ONNX Runtime and stream its activations into range estimators.

The chosen intermediates are exposed as extra graph outputs. Each batch's values
go to the estimators with padding positions excluded (via the attention mask)
and are then dropped, so memory does not grow with the number of sequences.

Memory per batch is bounded by cutting the graph into segments (``segments.py``)
that each expose a chunk of the tensors: ``tensors_per_pass`` caps a chunk's tensor
count, ``max_memory`` (MB) the bytes it exposes for one batch. A batch flows through the
segments in turn, so a bound never costs a second inference pass.

Estimation runs between segments, not beside them: on two cores ONNX Runtime
already uses both while a segment runs. Between segments the estimators' updates run
on a thread pool (each estimator updated by one task at a time, so batch order is kept);
NumPy releases the GIL in its ufunc loops (the min/max every estimator takes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnx
from tqdm import tqdm

from qonnx_bert.calibration.estimators import NonFiniteError, RangeEstimator
from qonnx_bert.calibration.memory import MB, pack, tensor_bytes
from qonnx_bert.calibration.segments import Pipeline, SplitModel
from qonnx_bert.calibration.tensors import MASK_INPUT, TensorLayout
from qonnx_bert.core.errors import UsageError

logger = logging.getLogger(__name__)
_POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="qonnx-estimate")


@dataclass(frozen=True)
class Target:
    """One estimate over one tensor: its layout and a factory for its estimator.

    ``per_channel`` estimators see ``(tokens, channels)`` rows (per-channel and
    per-group granularities); per-tensor ones see every valid element as one column,
    unless the estimator sets ``whole_rows`` (it needs each row's values together).
    ``key`` names the estimate in ``collect``'s result (default: the tensor name,
    plus ``#channels`` for per-channel rows).
    """

    layout: TensorLayout
    make: Callable[[], RangeEstimator]
    per_channel: bool = False
    label: str = ""
    key: str = ""

    @property
    def result_key(self) -> str:
        return self.key or self.layout.name + ("#channels" if self.per_channel else "")


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


def graph_order(model: onnx.ModelProto, names: Iterable[str]) -> list[str]:
    """``names`` (deduplicated) by the position of their producing node; graph inputs first."""
    position = {out: i for i, node in enumerate(model.graph.node) for out in node.output}
    return sorted(dict.fromkeys(names), key=lambda n: position.get(n, -1))


def plan_chunks(
    model: onnx.ModelProto,
    names: Sequence[str],
    *,
    tensors_per_pass: int | None = None,
    max_memory: float | None = None,
    batch_shape: tuple[int, int] | None = None,
) -> list[list[str]]:
    """Tensors in graph order, cut so each chunk has at most ``tensors_per_pass`` tensors and,
    for one batch of ``batch_shape`` (sequences, tokens), at most ``max_memory`` MB."""
    names = graph_order(model, names)
    if max_memory is None:
        size = tensors_per_pass or max(1, len(names))
        return [names[i : i + size] for i in range(0, len(names), size)]
    if batch_shape is None:
        raise ValueError("max_memory needs batch_shape (sequences per batch, tokens per sequence)")
    sizes = tensor_bytes(model, names, *batch_shape)
    return pack(names, sizes, max_memory, max_count=tensors_per_pass)


def collect(
    model: onnx.ModelProto | SplitModel,
    targets: list[Target],
    batches: Callable[[], Iterable[dict[str, np.ndarray]]],
    *,
    num_batches: int | None = None,
    tensors_per_pass: int | None = None,
    max_memory: float | None = None,
    batch_shape: tuple[int, int] | None = None,
    progress: bool = True,
) -> dict[str, RangeEstimator]:
    """Feed every batch's activations to each target's estimator; returns them by ``Target.result_key``.

    ``batches`` is called once; ``model`` is the prepared FP32 model (split or whole).
    ``max_memory`` (MB) bounds the activations one segment exposes for one batch.
    """
    split = model if isinstance(model, SplitModel) else SplitModel.from_proto(model)
    chunks = plan_chunks(
        split.graph,
        [t.layout.name for t in targets],
        tensors_per_pass=tensors_per_pass,
        max_memory=max_memory,
        batch_shape=batch_shape,
    )
    _log_plan(split.graph, chunks, batch_shape)
    pipeline = Pipeline(split, chunks)
    estimators = {t.result_key: t.make() for t in targets}
    by_tensor: dict[str, list[Target]] = {}
    for t in targets:
        by_tensor.setdefault(t.layout.name, []).append(t)
    with tqdm(total=num_batches, desc="calibrating", unit="batch", disable=not progress) as bar:
        for feeds in batches():
            mask = feeds.get(MASK_INPUT)
            mask = None if mask is None or mask.all() else mask  # no padding: nothing to exclude
            for values in pipeline.run(feeds):
                _feed(estimators, by_tensor, values, mask)
                del values  # let the segment's activations go before the next one runs
            bar.update()
    return estimators


def _feed(estimators: dict, by_tensor: dict[str, list[Target]], values: dict, mask: np.ndarray | None) -> None:
    jobs = [(estimators[t.result_key], t, x) for name, x in values.items() for t in by_tensor[name]]
    list(_POOL.map(lambda job: _update(*job, mask), jobs))


def _log_plan(model: onnx.ModelProto, chunks: list[list[str]], batch_shape: tuple[int, int] | None) -> None:
    if batch_shape is None or not logger.isEnabledFor(logging.INFO):
        return
    sizes = tensor_bytes(model, [n for c in chunks for n in c], *batch_shape)
    peak = max(sum(sizes[n] for n in c) for c in chunks) / MB
    logger.info(
        "exposing %d tensors in %d segment(s) of at most %.0f MB (batches of %d x %d tokens)",
        len(sizes),
        len(chunks),
        peak,
        *batch_shape,
    )


def _update(estimator: RangeEstimator, target: Target, x: np.ndarray, mask: np.ndarray | None) -> None:
    whole_rows = target.per_channel or getattr(estimator, "whole_rows", False)
    rows, keep = as_rows(x, valid_mask(target.layout, x.shape, mask), whole_rows)
    try:
        estimator.update(rows.astype(np.float32, copy=False), keep)
    except NonFiniteError:
        name = target.layout.name
        role = f" (role {target.label})" if target.label and target.label != name else ""
        raise UsageError(
            f"tensor {name}{role} holds NaN or Inf on the calibration data; check the model and its inputs"
        ) from None
