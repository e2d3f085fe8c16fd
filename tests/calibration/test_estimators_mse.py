"""MSE ranges and weight ranges against brute force on the raw data.

The activation MSE estimator scores candidates on a histogram; the brute force scores the
same candidate grid (``search_range``) on the raw values with the exact quantize-dequantize.
"""

from __future__ import annotations

import numpy as np
import pytest

from qonnx_bert.calibration.estimators import (
    MSE,
    NonFiniteError,
    PerTensor,
    data_mse,
    grid,
    hist_mse,
    quant_dequant,
    search_range,
    weight_range,
)


def outlier_data(rows: int = 1500, cols: int = 16, seed: int = 0) -> np.ndarray:
    """N(0, 1) with two columns holding 10-100x values on a few rows (the paper's pattern)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    hot = rng.choice(rows, 5, replace=False)
    x[np.ix_(hot, [3, 11])] = rng.uniform(10, 100, (5, 2)) * rng.choice([-1, 1], (5, 2))
    return x


def mse_of(values: np.ndarray, lo, hi, bits: int, symmetric: bool) -> float:
    return float(data_mse(values, np.reshape(lo, (1, 1)), np.reshape(hi, (1, 1)), bits, symmetric)[0, 0])


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [8, 4])
def test_mse_matches_brute_force_and_beats_minmax(bits, symmetric):
    x = outlier_data()
    est = MSE(PerTensor(), bits=bits, symmetric=symmetric)
    for part in np.array_split(x, 3):
        est.update(part)
    lo, hi = (float(v[0]) for v in est.range())
    values = x.reshape(1, -1).astype(np.float64)
    b_lo, b_hi = search_range(
        lambda l, h: data_mse(values, l, h, bits, symmetric),  # noqa: E741
        values.min(1),
        values.max(1),
        symmetric,
    )
    chosen, best = mse_of(values, lo, hi, bits, symmetric), mse_of(values, b_lo, b_hi, bits, symmetric)
    # 3%: the histogram (2048 bins, uniform rounding noise) approximates the exact error;
    # measured 0.2-2.7% over bits 2-8 on this data
    assert best <= chosen <= best * 1.03
    assert chosen <= mse_of(values, x.min(), x.max(), bits, symmetric)  # no slack
    # on its own objective the search can never lose to min-max: min-max is a candidate
    objective = hist_mse(est.hist, np.array([[lo]]), np.array([[hi]]), bits, symmetric)
    t = np.abs(values).max()
    minmax = (-t, t) if symmetric else (min(x.min(), 0), x.max())
    assert objective[0, 0] <= hist_mse(est.hist, *(np.array([[v]]) for v in minmax), bits, symmetric)[0, 0]


def test_mse_clips_outliers_at_low_bits():
    x = np.random.default_rng(0).standard_normal((4000, 4))
    x[0, 0] = 60.0
    est = MSE(PerTensor(), bits=4, symmetric=True)
    est.update(x)
    assert est.range()[1][0] < 10.0


def test_quant_grid():
    scale, lo, hi = grid(-1.0, 3.0, 8, False)
    assert scale == pytest.approx(4 / 255) and lo <= 0 <= hi and (hi - lo) == pytest.approx(4.0)
    assert quant_dequant(0.0, -1.0, 3.0, 8, False) == 0.0  # zero is exact
    assert quant_dequant(10.0, -1.0, 3.0, 8, False) == pytest.approx(hi)
    levels = np.unique(quant_dequant(np.linspace(-2, 2, 1001), -1.0, 1.0, 4, True))
    assert len(levels) == 15 and levels.max() == 1.0  # restricted signed 4-bit grid
    assert quant_dequant(5.0, 0.0, 0.0, 8, False) == 0.0  # empty range: no division by zero


@pytest.mark.parametrize("symmetric", [True, False])
def test_weight_minmax(symmetric):
    w = np.random.default_rng(0).standard_normal((6, 5, 4)).astype(np.float32)
    lo, hi = weight_range(w, "minmax", axis=1, symmetric=symmetric)
    per_channel = np.moveaxis(w, 1, 0).reshape(5, -1)
    if symmetric:
        np.testing.assert_array_equal(hi, np.abs(per_channel).max(axis=1))
        np.testing.assert_array_equal(lo, -hi)
    else:
        np.testing.assert_array_equal([lo, hi], [per_channel.min(1), per_channel.max(1)])
    lo, hi = weight_range(w, "minmax", axis=None, symmetric=symmetric)
    assert lo.shape == (1,) and hi[0] == (np.abs(w).max() if symmetric else w.max())


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [8, 6, 4, 2])
def test_weight_mse_per_channel(bits, symmetric):
    w = np.random.default_rng(0).standard_normal((64, 6)).astype(np.float32)  # as in ONNX
    w[0, 1] = 12.0  # an outlier weight in output channel 1
    lo, hi = weight_range(w, "mse", bits, axis=1, symmetric=symmetric)
    assert lo.shape == (6,) and lo.dtype == np.float32
    for c in (0, 1, 5):
        col = w[:, c]
        one = weight_range(col, "mse", bits, symmetric=symmetric)
        assert (one[0][0], one[1][0]) == (lo[c], hi[c])  # per channel == per tensor per column
        t = np.abs(col).max()
        minmax = (-t, t) if symmetric else (col.min(), col.max())
        chosen = mse_of(col[None], lo[c], hi[c], bits, symmetric)
        assert chosen <= mse_of(col[None], *minmax, bits, symmetric)  # exact objective: no slack
    if symmetric:  # a dense independent scan of the clipping threshold; 1%: grid spacing
        col = w[:, 1][None]
        scan = np.linspace(0.01, 1, 2000)[None] * np.abs(col).max()
        assert chosen <= data_mse(col, -scan, scan, bits, True).min() * 1.01


def test_weight_range_errors():
    with pytest.raises(ValueError, match="method"):
        weight_range(np.ones(3), "entropy")
    with pytest.raises(ValueError, match="bits"):
        weight_range(np.ones(3), bits=1)
    with pytest.raises(NonFiniteError):
        weight_range(np.array([1.0, np.nan]))
    lo, hi = weight_range(np.zeros((3, 2)), "mse", axis=0)
    assert np.all(lo == 0) and np.all(hi == 0)
