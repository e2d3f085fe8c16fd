"""Running min/max: an exponential moving average of each update's min and max.

Each ``update`` is one batch. The first batch initialises the averages; after that
``r = momentum * r + (1 - momentum) * batch``. Less sensitive than the global min/max
to one batch with an outlier, but depends on batch order and size.
"""

from __future__ import annotations

import numpy as np

from qonnx_bert.calibration.estimators.base import BaseEstimator, Granularity
from qonnx_bert.calibration.estimators.registry import register_estimator


@register_estimator("running_minmax")
class RunningMinMax(BaseEstimator):
    """EMA of per-batch min and max per group; ``momentum`` in [0, 1)."""

    def __init__(self, granularity: Granularity, *, momentum: float = 0.9) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        super().__init__(granularity)

    def _clear(self) -> None:
        self._lo: np.ndarray | None = None
        self._hi: np.ndarray | None = None

    def _update(self, cols: np.ndarray) -> None:
        lo, hi = (v.astype(np.float64) for v in self.bounds)
        if self._lo is None:
            self._lo, self._hi = lo, hi
            return
        m = self.momentum
        self._lo = m * self._lo + (1.0 - m) * lo
        self._hi = m * self._hi + (1.0 - m) * hi

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        return self._lo, self._hi
