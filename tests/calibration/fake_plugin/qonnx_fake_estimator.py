"""A throwaway third-party estimator; test_registry puts this folder on sys.path."""

import numpy as np

from qonnx_bert.calibration.estimators import BaseEstimator


class AbsMax(BaseEstimator):
    """Symmetric range +-(margin * max|x|), written against the public base class."""

    def __init__(self, granularity, *, margin: float = 1.0):
        self.margin = margin
        super().__init__(granularity)

    def _clear(self):
        self._t = None

    def _update(self, cols):
        t = self.layout.minmax(np.abs(cols))[1]
        self._t = t if self._t is None else np.maximum(self._t, t)

    def _range(self):
        return -self.margin * self._t, self.margin * self._t
