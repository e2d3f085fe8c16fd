"""Numeric comparisons of a test output with a reference: SQNR and prediction agreement."""

from __future__ import annotations

import numpy as np


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio, 10*log10(sum(ref^2) / sum((ref - test)^2))."""
    noise = float(np.sum((reference.astype(np.float64) - test) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10.0 * np.log10(signal / noise)


def argmax_agreement(reference: np.ndarray, test: np.ndarray) -> float:
    """Fraction of rows whose argmax (predicted class) is the same."""
    return float(np.mean(reference.argmax(-1) == test.argmax(-1)))
