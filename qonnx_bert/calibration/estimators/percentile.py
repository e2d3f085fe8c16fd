"""Percentile ranges: clip the rarest ``100 - percentile`` % of values on each side.

Outliers in BERT activations are few but huge; a percentile range ignores them at the
price of clipping them. The data are summarised in a fixed-size streaming histogram
(``StreamingHistogram``), so the result is within one bin width of ``np.percentile``
of all the data while memory stays constant however much data is calibrated.
"""

from __future__ import annotations

import numpy as np

from qonnx_bert.calibration.estimators.base import Granularity
from qonnx_bert.calibration.estimators.histogram import HistogramEstimator
from qonnx_bert.calibration.estimators.registry import register_estimator


@register_estimator("percentile")
class Percentile(HistogramEstimator):
    """``(lo, hi)`` = the (100 - p)-th and p-th percentiles; symmetric: +-p-th percentile of |x|."""

    def __init__(
        self,
        granularity: Granularity,
        *,
        percentile: float = 99.99,
        symmetric: bool = False,
        bins: int = 2048,
        sample: int = 65536,
    ) -> None:
        if not 50.0 <= percentile <= 100.0:
            raise ValueError(f"percentile must be in [50, 100], got {percentile}")
        self.percentile = float(percentile)
        super().__init__(granularity, symmetric=symmetric, bins=bins, sample=sample)

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        q = self.percentile / 100.0
        if self.symmetric:
            t = self.hist.quantile(q)
            return -t, t
        return self.hist.quantile(1.0 - q), self.hist.quantile(q)
