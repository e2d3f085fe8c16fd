"""Global min/max: the paper's default range for activations.

In the paper "current" min/max means the min/max of the batch(es) used for calibration.
This estimator accumulates over every ``update``, so "current" over the whole calibration
set and ``allminmax`` are the same global min/max; both names map to this one
implementation (``AllMinMax`` only renames it).
"""

from __future__ import annotations

import numpy as np

from qonnx_bert.calibration.estimators.base import BaseEstimator
from qonnx_bert.calibration.estimators.registry import register_estimator


@register_estimator("current_minmax")
class CurrentMinMax(BaseEstimator):
    """Smallest and largest value seen in each group over all updates."""

    def _clear(self) -> None:
        self._lo: np.ndarray | None = None
        self._hi: np.ndarray | None = None

    def _update(self, cols: np.ndarray) -> None:
        lo, hi = self.bounds
        if self._lo is None:
            self._lo, self._hi = lo, hi
        else:
            self._lo, self._hi = np.minimum(self._lo, lo), np.maximum(self._hi, hi)

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        return self._lo, self._hi


@register_estimator("allminmax")
class AllMinMax(CurrentMinMax):
    """The same global min/max under the name the paper uses for it."""
