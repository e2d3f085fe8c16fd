"""A fixed-size streaming histogram per group, shared by the percentile and MSE estimators.

Memory must not grow with the calibration set, so each group keeps ``bins`` counts over
``[lo, lo + bins * width)``. When new data falls outside, the span grows by a power of two
``2**k`` with the new lower edge ``a`` new bins below the old one; old bin ``i`` then lies
wholly inside new bin ``a + i // 2**k``, so re-binning merges counts exactly (no smearing).
Exact per-group min and max are kept too, to clamp quantiles to the data.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from qonnx_bert.calibration.estimators.base import BaseEstimator, Granularity, Layout


class StreamingHistogram:
    """Counts ``(G, bins)`` over per-group edges ``lo + width * arange(bins + 1)``."""

    BLOCK = 65536  # values binned per step: the block's float32 and index buffers stay in cache

    def __init__(self, bins: int = 2048) -> None:
        if bins < 2 or bins % 2:
            raise ValueError(f"bins must be an even number >= 2, got {bins}")
        self.bins = bins
        self.counts: np.ndarray | None = None

    def update(self, cols: np.ndarray, layout: Layout, bounds: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Add gathered columns ``cols`` (rows x columns in ``layout`` order); ``bounds``: their
        per-group (min, max) when already known."""
        gmin, gmax = (v.astype(np.float64) for v in (bounds or layout.minmax(cols)))
        if self.counts is None:
            self.dmin, self.dmax, self.lo = gmin, gmax, gmin.copy()
            span = gmax - gmin
            tiny = np.maximum(np.abs(gmin), 1.0) * 2.0**-20  # constant data: any small span
            self.width = np.where(span > 0, span, tiny) / self.bins
            self.counts = np.zeros((layout.n_groups, self.bins))
        else:
            self.dmin, self.dmax = np.minimum(self.dmin, gmin), np.maximum(self.dmax, gmax)
            self._widen(gmin, gmax)
        self.counts += self._bin_counts(cols, layout).reshape(self.counts.shape)

    def _bin_counts(self, cols: np.ndarray, layout: Layout) -> np.ndarray:
        """Flat ``(G * bins,)`` counts of ``cols``, computed in row blocks of ~``BLOCK`` values.

        Hand-written rather than ``np.histogram`` (one range per call, float64, a Python loop
        per group): one pass for all groups, float32 arithmetic on a cache-sized block reused
        across blocks. float32 rounding moves a value by < 1e-3 of a bin, so a value within
        that of an edge may land in the neighbouring bin: inside the one-bin accuracy.
        """
        lo = self.lo[layout.gid].astype(np.float32)
        inv_width = (1.0 / self.width[layout.gid]).astype(np.float32)
        offset = None if layout.n_groups == 1 else layout.gid * self.bins
        step = max(1, self.BLOCK // cols.shape[1])
        scaled = np.empty((min(step, len(cols)), cols.shape[1]), np.float32)
        index = np.empty(scaled.shape, np.intp)
        counts = np.zeros(layout.n_groups * self.bins, np.int64)
        for start in range(0, len(cols), step):
            block = cols[start : start + step]
            f, i = scaled[: len(block)], index[: len(block)]
            np.subtract(block, lo, out=f, casting="unsafe")
            np.multiply(f, inv_width, out=f)
            np.copyto(i, f, casting="unsafe")  # truncation == floor: f >= 0 up to rounding, clipped next
            np.clip(i, 0, self.bins - 1, out=i)
            if offset is not None:
                i += offset
            counts += np.bincount(i.ravel(), minlength=counts.size)
        return counts

    def _widen(self, gmin: np.ndarray, gmax: np.ndarray) -> None:
        """Grow the span of groups whose new data falls outside their edges."""
        hi = self.lo + self.bins * self.width
        grow = (gmin < self.lo) | (gmax > hi)
        if not grow.any():
            return
        lo, w, b = self.lo[grow], self.width[grow], self.bins
        m, big = np.minimum(gmin[grow], lo), np.maximum(gmax[grow], hi[grow])
        k = np.maximum(1, np.ceil(np.log2((big - m) / (b * w))))
        for _ in range(2):  # k or k + 1 doublings always suffice
            a = np.ceil((lo - m) / (w * 2.0**k))
            short = lo + (b - a) * w * 2.0**k <= big
            k = np.where(short, k + 1, k)
        a = np.ceil((lo - m) / (w * 2.0**k))
        shift = np.minimum(k, 62).astype(np.int64)
        new_bin = np.minimum(a[:, None].astype(np.int64) + (np.arange(b) >> shift[:, None]), b - 1)
        flat = (new_bin + np.arange(len(k))[:, None] * b).ravel()
        old = self.counts[grow]
        self.counts[grow] = np.bincount(flat, weights=old.ravel(), minlength=old.size).reshape(old.shape)
        self.lo[grow], self.width[grow] = lo - a * w * 2.0**k, w * 2.0**k

    def centres(self) -> np.ndarray:
        """Bin centres ``(G, bins)``."""
        return self.lo[:, None] + (np.arange(self.bins) + 0.5) * self.width[:, None]

    def _element(self, cum: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Estimated value of the ``j``-th smallest element per group: inside its own bin."""
        b = np.argmax(cum > j[:, None], axis=1)
        in_bin = self.counts[np.arange(len(b)), b]
        before = cum[np.arange(len(b)), b] - in_bin
        return self.lo + (b + (j - before + 0.5) / in_bin) * self.width

    def quantile(self, q: float) -> np.ndarray:
        """Per-group value at fraction ``q``, interpolated like ``np.percentile`` between the
        elements of rank ``floor(q * (n - 1))`` and the next; each lies in its bin, so the
        result is within one bin width of the exact percentile."""
        cum = np.cumsum(self.counts, axis=1)
        last = cum[:, -1] - 1
        rank = q * last
        j = np.floor(rank)
        low, high = self._element(cum, j), self._element(cum, np.minimum(j + 1, last))
        return np.clip(low + (rank - j) * (high - low), self.dmin, self.dmax)


@lru_cache(maxsize=None)
def sample_stride(values: int, budget: int) -> int:
    """1, or the smallest prime >= 5 that cuts ``values`` to at most ``budget``: a prime
    shares no factor with a tensor's axes (powers of 2 and 3 in BERTs), so a strided sample
    visits every hidden dimension, head and position instead of aliasing onto a few."""
    if not budget or values <= budget:
        return 1
    stride = max(5, -(-values // budget))
    while any(stride % d == 0 for d in range(2, int(stride**0.5) + 1)):
        stride += 1
    return stride


class HistogramEstimator(BaseEstimator):
    """Base of the estimators that read their range off a streaming histogram (of |x| if symmetric).

    Binning is the costly part of calibration (~2 ns a value, against ~0.2 ns for min and
    max), so each update bins an evenly strided sample of at most ``sample`` values
    (rows, in layout order; ``sample=0`` bins all), the offset moving on every update,
    while the min and max that fix the histogram's edges come from every value.
    """

    def __init__(
        self, granularity: Granularity, *, symmetric: bool = False, bins: int = 2048, sample: int = 65536
    ) -> None:
        if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
            raise ValueError(f"sample must be a count of values >= 0 (0: all), got {sample!r}")
        self.symmetric, self.bins, self.sample = bool(symmetric), int(bins), sample
        StreamingHistogram(self.bins)  # validates bins before any data arrives
        super().__init__(granularity)

    def _clear(self) -> None:
        self.hist = StreamingHistogram(self.bins)
        self.updates = 0

    def _update(self, cols: np.ndarray) -> None:
        stride = sample_stride(cols.size, self.sample)
        sample = cols[self.updates % stride :: stride]
        self.updates += 1
        if self.symmetric:  # the largest |x| from the bounds of every value, the smallest from the sample
            values = np.abs(sample)
            top = np.maximum(np.abs(self.bounds[0]), np.abs(self.bounds[1]))
            self.hist.update(values, self.layout, (self.layout.minmax(values)[0], top))
        else:
            self.hist.update(sample, self.layout, self.bounds)
