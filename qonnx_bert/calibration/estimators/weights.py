"""Weight ranges: per-tensor or per-output-channel, at any bit-width.

Weights are known ahead of time and small, so no streaming is needed: min-max reads them
directly and MSE scores each candidate range on the raw values (``data_mse``) with the
same search as the activation estimator. Symmetric by default, as ONNX Runtime expects
for int8 weights.
"""

from __future__ import annotations

import numpy as np

from qonnx_bert.calibration.estimators.base import NonFiniteError
from qonnx_bert.calibration.estimators.mse import data_mse, search_range
from qonnx_bert.calibration.estimators.quant import check_bits

METHODS = ("minmax", "mse")


def _channels(w: np.ndarray, axis: int | None) -> np.ndarray:
    """``w`` as ``(G, n)``: one row for the tensor, or one per index along ``axis``."""
    if axis is None:
        return w.reshape(1, -1)
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def weight_range(
    w: np.ndarray, method: str = "minmax", bits: int = 8, axis: int | None = None, symmetric: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` float32 of shape ``(1,)``, or ``(w.shape[axis],)`` per channel."""
    if method not in METHODS:
        raise ValueError(f"weight range method must be one of {METHODS}, got {method!r}")
    bits, w = check_bits(bits), np.asarray(w, np.float64)
    if w.size == 0:
        raise ValueError("weight_range of an empty tensor")
    if not np.isfinite(w).all():
        raise NonFiniteError(f"{np.count_nonzero(~np.isfinite(w))} non-finite value(s) in weights")
    values = _channels(w, axis)
    lo, hi = values.min(axis=1), values.max(axis=1)
    if method == "mse":
        objective = lambda l, h: data_mse(values, l, h, bits, symmetric)  # noqa: E731, E741
        lo, hi = search_range(objective, lo, hi, symmetric)
    elif symmetric:
        hi = np.maximum(np.abs(lo), np.abs(hi))
        lo = -hi
    return lo.astype(np.float32), hi.astype(np.float32)
