"""Low-bit weight grids: how a float weight maps to the integers a DequantizeLinear stores.

Symmetric and restricted, as every weight in qonnx: ``q = clip(round_half_even(w / s),
-qmax, qmax)`` with ``qmax = 2**(bits-1) - 1`` (8: ±127, 6: ±31, 4: ±7, 2: ±1, i.e. the
2-bit grid is ternary), zero point 0. One scale per tensor, per output channel (per row
for an embedding table), or per block of ``block_size`` input elements within a channel,
laid out as ONNX's DequantizeLinear reads it (``axis``, opset-21 ``block_size``). Below 8
bits the range is the MSE one, as the paper does; at 8 bits min-max, as the schemes do.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from qonnx_bert.calibration.estimators.weights import weight_range
from qonnx_bert.core.errors import UsageError

BITS = (8, 6, 4, 2)
# Storage type per bit-width. ONNX has no 6-bit type: 6-bit integers sit in int8 (64 of its 256 levels).
STORAGE = {8: np.int8, 6: np.int8, 4: ml_dtypes.int4, 2: ml_dtypes.int2}


class Granularity(enum.Enum):
    PER_TENSOR = "per-tensor"
    PER_CHANNEL = "per-channel"  # per output channel; per row (token) for an embedding table
    BLOCK = "block"  # per block of ``block_size`` input elements within each channel


@dataclass(frozen=True)
class WeightGrid:
    """Bits and scale granularity of one kind of weight (linear layers or the word embedding table)."""

    bits: int = 8
    granularity: Granularity = Granularity.PER_CHANNEL
    block_size: int = 32

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise UsageError(f"weight bits {self.bits!r} unsupported: use one of {', '.join(map(str, BITS))}")
        if self.granularity is Granularity.BLOCK and (self.block_size < 2 or self.block_size & (self.block_size - 1)):
            raise UsageError(f"block size {self.block_size} must be a power of two >= 2 (e.g. 32)")

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1


@dataclass(frozen=True)
class QuantizedWeight:
    """Integers and scales of one weight, in DequantizeLinear's layout."""

    integers: np.ndarray  # int64 values, the weight's shape
    scale: np.ndarray  # float32: scalar, (channels,), or the weight's shape with the blocked axis divided
    axis: int | None  # DequantizeLinear ``axis`` (None: per-tensor)
    block_size: int | None
    bits: int

    def full_scale(self) -> np.ndarray:
        """Each integer's scale, the weight's shape."""
        scale = self.scale
        if self.block_size:
            scale = np.repeat(scale, self.block_size, axis=self.axis)
        elif self.axis is not None:
            scale = np.expand_dims(scale, tuple(d for d in range(self.integers.ndim) if d != self.axis))
        return np.broadcast_to(scale, self.integers.shape)

    def dequantize(self) -> np.ndarray:
        """What DequantizeLinear computes: the float32 product (exact in float64, then rounded once)."""
        return (self.integers * self.full_scale().astype(np.float64)).astype(np.float32)

    def stored(self) -> np.ndarray:
        return self.integers.astype(STORAGE[self.bits])


def _groups(w: np.ndarray, grid: WeightGrid, channel_axis: int) -> np.ndarray:
    """``w`` (2-D) as rows that share one scale: ``(1, n)``, ``(C, R)`` or ``(C * R / block, block)``."""
    rows = np.moveaxis(w, channel_axis, 0)  # (C, R)
    if grid.granularity is Granularity.PER_TENSOR:
        return rows.reshape(1, -1)
    if grid.granularity is Granularity.PER_CHANNEL:
        return rows
    if rows.shape[1] % grid.block_size:
        raise UsageError(
            f"block size {grid.block_size} does not divide this weight's input size {rows.shape[1]}: pick a divisor"
        )
    return rows.reshape(-1, grid.block_size)


def weight_scale(w: np.ndarray, grid: WeightGrid, channel_axis: int) -> np.ndarray:
    """Scales ``(groups,)`` float32 of ``w``'s grid; MSE ranges below 8 bits, min-max at 8."""
    _, hi = weight_range(_groups(w, grid, channel_axis), "mse" if grid.bits < 8 else "minmax", grid.bits, axis=0)
    scale = (hi.astype(np.float64) / grid.qmax).astype(np.float32)
    return np.where(scale > 0, scale, np.float32(1.0))  # an all-zero group: any scale gives 0


def round_to_grid(w: np.ndarray, grid: WeightGrid, channel_axis: int, scale: np.ndarray) -> np.ndarray:
    """Round-to-nearest (half to even, as QuantizeLinear) integers of ``w`` on ``scale``, the weight's shape."""
    rows = _groups(np.asarray(w, np.float32), grid, channel_axis)
    q = np.clip(np.rint(rows / scale[:, None]), -grid.qmax, grid.qmax).astype(np.int64)
    shape = np.moveaxis(w, channel_axis, 0).shape
    return np.moveaxis(q.reshape(shape), 0, channel_axis)


def layout(
    w: np.ndarray, integers: np.ndarray, scale: np.ndarray, grid: WeightGrid, channel_axis: int
) -> QuantizedWeight:
    """Integers and per-group scales in DequantizeLinear's layout for a 2-D ``w``."""
    if grid.granularity is Granularity.PER_TENSOR:
        return QuantizedWeight(integers, scale.reshape(()), None, None, grid.bits)
    if grid.granularity is Granularity.PER_CHANNEL:
        return QuantizedWeight(integers, scale, channel_axis, None, grid.bits)
    channels, inputs = w.shape[channel_axis], w.shape[1 - channel_axis]
    blocks = np.moveaxis(scale.reshape(channels, inputs // grid.block_size), 0, channel_axis)
    return QuantizedWeight(integers, np.ascontiguousarray(blocks), 1 - channel_axis, grid.block_size, grid.bits)


def quantize_weight(w: np.ndarray, grid: WeightGrid, channel_axis: int) -> QuantizedWeight:
    """Round-to-nearest quantization of a 2-D weight whose output channels lie along ``channel_axis``."""
    scale = weight_scale(w, grid, channel_axis)
    return layout(w, round_to_grid(w, grid, channel_axis, scale), scale, grid, channel_axis)
