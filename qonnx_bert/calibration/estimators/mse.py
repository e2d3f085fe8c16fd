"""MSE ranges: the range whose quantize-dequantize error is smallest, not the widest one.

``search_range`` scans candidate ranges as fractions of the observed range (symmetric:
1-D over max|x|; asymmetric: 2-D over (lo, hi)), then refines around the best on a finer
grid that contains it, so the result is never worse than min-max on the objective.
Activations are scored against a ``StreamingHistogram`` (count-weighted bin centres:
``scale**2 / 12`` rounding noise inside the grid, squared distance to the grid edge
outside); weights, being small, are scored on the raw data with ``data_mse``.
"""

from __future__ import annotations

import itertools
from typing import Callable

import numpy as np

from qonnx_bert.calibration.estimators.base import Granularity
from qonnx_bert.calibration.estimators.histogram import HistogramEstimator, StreamingHistogram
from qonnx_bert.calibration.estimators.quant import check_bits, grid, quant_dequant
from qonnx_bert.calibration.estimators.registry import register_estimator

Objective = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (G, K) lo, hi -> (G, K) error


def _argmin_fractions(objective: Objective, to_range, fractions: np.ndarray) -> np.ndarray:
    """The row of ``fractions`` ``(G, K, d)`` with the least error, per group ``(G, d)``; of
    equal errors the last (widest) one, so an objective flat everywhere gives min-max."""
    lo, hi = to_range(fractions)  # scored as returned: rounded to float32
    err = objective(lo.astype(np.float32).astype(np.float64), hi.astype(np.float32).astype(np.float64))
    last = err.shape[1] - 1 - np.argmin(err[:, ::-1], axis=1)
    return fractions[np.arange(len(fractions)), last]


def search_range(
    objective: Objective, lo0: np.ndarray, hi0: np.ndarray, symmetric: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Best ``(lo, hi)`` float32 per group among fractions of the observed ``(lo0, hi0)``.

    Coarse grid: fractions ``k / n``, k = 1..n, per dimension (k = n is min-max). Fine grid:
    step ``1 / (m * n)`` within one coarse step of the coarse best, which it contains.
    """
    dims, n, m = (1, 48, 24) if symmetric else (2, 20, 10)
    if symmetric:
        t0 = np.maximum(np.abs(lo0), np.abs(hi0))[:, None]
        to_range = lambda f: (-f[..., 0] * t0, f[..., 0] * t0)  # noqa: E731
    else:
        lo0, hi0 = np.minimum(lo0, 0.0)[:, None], np.maximum(hi0, 0.0)[:, None]
        to_range = lambda f: (f[..., 0] * lo0, f[..., 1] * hi0)  # noqa: E731
    coarse = np.array(list(itertools.product(np.arange(1, n + 1) / n, repeat=dims)))
    best = _argmin_fractions(objective, to_range, np.broadcast_to(coarse, (len(lo0),) + coarse.shape))
    offsets = np.array(list(itertools.product(np.arange(-m, m + 1) / (m * n), repeat=dims)))
    fine = np.clip(best[:, None, :] + offsets, 1.0 / (m * n), 1.0)  # offset 0 keeps ``best``
    lo, hi = to_range(_argmin_fractions(objective, to_range, fine)[:, None, :])
    return lo[:, 0].astype(np.float32), hi[:, 0].astype(np.float32)


class _BinSums:
    """Prefix sums of ``n``, ``n*c``, ``n*c**2`` over bins: sums over any bin run in O(1)."""

    def __init__(self, hist: StreamingHistogram) -> None:
        c, n, zero = hist.centres(), hist.counts, np.zeros((len(hist.counts), 1))
        self.prefix = [np.concatenate([zero, np.cumsum(n * c**p, axis=1)], axis=1) for p in range(3)]
        self.hist = hist

    def total(self, p: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return np.take_along_axis(self.prefix[p], j, 1) - np.take_along_axis(self.prefix[p], i, 1)

    def squared(self, i: np.ndarray, j: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Sum of ``n * (c - v)**2`` over bins ``i:j``."""
        return self.total(2, i, j) - 2 * v * self.total(1, i, j) + v**2 * self.total(0, i, j)

    def first(self, v: np.ndarray) -> np.ndarray:
        """Index of the first bin whose centre is >= ``v``."""
        pos = np.ceil((v - self.hist.lo[:, None]) / self.hist.width[:, None] - 0.5)
        return np.clip(pos, 0, self.hist.bins).astype(np.int64)


def hist_mse(hist: StreamingHistogram, lo: np.ndarray, hi: np.ndarray, bits: int, symmetric: bool) -> np.ndarray:
    """Expected squared error ``(G, K)`` of candidate ranges, from the histogram.

    Clipped bins cost their squared distance to the grid edge; bins within half a step of
    0 (always on the grid) round to 0 and cost ``c**2``; other bins inside cost the
    uniform rounding noise ``scale**2 / 12``.
    """
    sums = _BinSums(hist)
    scale, clip_lo, clip_hi = grid(lo, hi, bits, symmetric)
    start, end = np.zeros(lo.shape, np.int64), np.full(lo.shape, hist.bins)
    i_lo, i_hi = sums.first(clip_lo), sums.first(clip_hi)
    z_lo = np.clip(sums.first(-scale / 2), i_lo, i_hi)
    z_hi = np.clip(sums.first(scale / 2), z_lo, i_hi)
    err = sums.squared(start, i_lo, clip_lo) + sums.squared(i_hi, end, clip_hi) + sums.squared(z_lo, z_hi, 0.0)
    noise = (sums.total(0, i_lo, i_hi) - sums.total(0, z_lo, z_hi)) * scale**2 / 12.0
    return (np.maximum(err, 0.0) + noise) / sums.prefix[0][:, -1:]


def data_mse(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int, symmetric: bool) -> np.ndarray:
    """Exact mean squared quantize-dequantize error ``(G, K)`` of ``values`` ``(G, n)``."""
    step = max(1, 2**22 // max(1, values.size))  # candidates per chunk: bounded memory
    v, out = values[:, None, :], []
    for k in range(0, lo.shape[1], step):
        q = quant_dequant(v, lo[:, k : k + step, None], hi[:, k : k + step, None], bits, symmetric)
        out.append(np.mean((q - v) ** 2, axis=2))
    return np.concatenate(out, axis=1)


@register_estimator("mse")
class MSE(HistogramEstimator):
    """Range minimising quantization MSE at ``bits``; symmetric searches max|x| only."""

    def __init__(
        self, granularity: Granularity, *, bits: int = 8, symmetric: bool = False, bins: int = 2048, sample: int = 65536
    ) -> None:
        self.bits = check_bits(bits)
        super().__init__(granularity, symmetric=symmetric, bins=bins, sample=sample)

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        objective = lambda lo, hi: hist_mse(self.hist, lo, hi, self.bits, self.symmetric)  # noqa: E731
        return search_range(objective, self.hist.dmin, self.hist.dmax, self.symmetric)
