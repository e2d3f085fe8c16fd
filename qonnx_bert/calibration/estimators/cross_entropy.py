"""Cross-entropy ranges for class logits: the range whose rounding moves the predicted
distribution least, not the one with the least squared error.

For the final output what matters is ``softmax(logits)``: clipping a logit far beyond the
others changes nothing, while rounding two close logits can flip the prediction. The
objective is the mean KL divergence ``KL(softmax(x) || softmax(qdq(x)))`` over the rows
(equal to the cross-entropy up to the data's own entropy, a constant), searched with the
same coarse-then-fine grid as ``mse`` (``search_range``), so it is never worse than
min-max on its objective. Logits are one row per sequence, so the rows are kept, up to
``max_rows`` of them as a seeded uniform reservoir sample: memory stays bounded.

Per channel or per group, each group's range is scored with only that group's columns
rounded (the others kept in float): the columns' effects on the softmax are coupled, and
that is the part one group's range can be chosen for.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from qonnx_bert.calibration.estimators.base import BaseEstimator, Granularity
from qonnx_bert.calibration.estimators.mse import search_range
from qonnx_bert.calibration.estimators.quant import check_bits, quant_dequant
from qonnx_bert.calibration.estimators.registry import register_estimator


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax_kl(rows: np.ndarray, rounded: np.ndarray) -> np.ndarray:
    """Mean over rows of ``KL(softmax(rows) || softmax(rounded))``; rows on axis -2."""
    log_p, log_q = log_softmax(rows), log_softmax(rounded)
    return np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1), axis=-1)


@register_estimator("cross_entropy")
class CrossEntropy(BaseEstimator):
    """Range minimising the softmax KL divergence of rounded logits at ``bits`` (>= 2 columns)."""

    whole_rows: ClassVar[bool] = True  # the collector feeds (sequences, classes) rows even per tensor

    def __init__(
        self, granularity: Granularity, *, bits: int = 8, symmetric: bool = False, max_rows: int = 65536, seed: int = 0
    ) -> None:
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive integer, got {max_rows!r}")
        self.bits, self.symmetric = check_bits(bits), bool(symmetric)
        self.max_rows, self.seed = max_rows, int(seed)
        super().__init__(granularity)

    def _clear(self) -> None:
        self.kept: list[np.ndarray] = []  # filled up to max_rows, then one array sampled into
        self.seen = 0
        self.rng = np.random.default_rng(self.seed)

    def _update(self, cols: np.ndarray) -> None:
        if cols.shape[1] < 2:
            raise ValueError("cross_entropy needs class logits (2 or more columns); use mse for a regression output")
        room = max(0, self.max_rows - self.seen)
        if room:
            self.kept.append(cols[:room].astype(np.float64))
            self.seen += len(cols[:room])
        if len(cols) <= room:
            return
        # Reservoir sampling (Algorithm R), vectorised: row number t replaces a random slot
        # with chance max_rows / t; a slot drawn twice keeps the later row, as in the loop.
        new = cols[room:]
        k = self.rng.integers(0, self.seen + 1 + np.arange(len(new)))
        hit = np.flatnonzero(k < self.max_rows)[::-1]
        slots, last = np.unique(k[hit], return_index=True)
        self.rows[slots] = new[hit[last]]
        self.seen += len(new)

    @property
    def rows(self) -> np.ndarray:
        if len(self.kept) > 1:
            self.kept = [np.concatenate(self.kept)]
        return self.kept[0]

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        lo0, hi0 = (v.astype(np.float64) for v in self.layout.minmax(self.rows))
        return search_range(self._objective, lo0, hi0, self.symmetric)

    def _objective(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """KL ``(G, K)`` of candidate ranges, each group rounded alone."""
        err = np.empty(lo.shape)
        step = max(1, 2**22 // self.rows.size)  # candidates per chunk: bounded memory
        for g, (start, size) in enumerate(zip(self.layout.starts, np.bincount(self.layout.gid))):
            cols = slice(start, start + size)
            for k in range(0, lo.shape[1], step):
                rounded = np.broadcast_to(self.rows, (len(lo[g, k : k + step]),) + self.rows.shape).copy()
                rounded[..., cols] = quant_dequant(
                    self.rows[:, cols],
                    lo[g, k : k + step, None, None],
                    hi[g, k : k + step, None, None],
                    self.bits,
                    self.symmetric,
                )
                err[g, k : k + step] = softmax_kl(self.rows, rounded)
        return err
