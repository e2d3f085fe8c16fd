"""Activation range estimators against NumPy references on BERT-like data.

The data follow the paper's pattern: mostly N(0, 1), plus a few columns holding values
10-100x larger on a few rows. Padding rows hold huge values and are masked out; any leak
of them into a result is visible at once. Min/max results must match NumPy exactly.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from qonnx_bert.calibration.estimators import (
    Layout, NonFiniteError, PerChannel, PerGroup, PerTensor, column_groups, make_estimator,
)

C = 24
GROUPS = PerGroup(((0, 5, 7), (1, 2, 3, 4, 6), tuple(range(8, 24))))  # uneven PEG-style groups
SPECS = ["current_minmax", "allminmax", "running_minmax", "percentile", "percentile:symmetric=true",
         "mse", "mse:symmetric=true"]


def batches(n_batches: int = 3, rows: int = 400, seed: int = 0):
    """``(x, valid)`` batches with planted outlier columns and masked huge padding rows."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        x = rng.standard_normal((rows, C)).astype(np.float32)
        hot = rng.choice(rows, 4, replace=False)
        x[np.ix_(hot, [2, 9])] = rng.uniform(10, 100, (4, 2)) * rng.choice([-1, 1], (4, 2))
        valid = np.ones(rows, bool)
        valid[-rows // 5:] = False
        x[~valid] = 1e6 * rng.choice([-1, 1], (int((~valid).sum()), C))
        out.append((x, valid))
    return out


def estimate(spec, granularity, data, columns=None):
    est = make_estimator(spec, granularity)
    for x, valid in data:
        est.update(x if columns is None else x[:, columns], valid)
    return est.range()


def test_column_groups_and_validation():
    assert [g.tolist() for g in column_groups(PerTensor(), 3)] == [[0, 1, 2]]
    assert [g.tolist() for g in column_groups(PerChannel(), 2)] == [[0], [1]]
    assert [g.tolist() for g in column_groups(GROUPS, C)][0] == [0, 5, 7]
    layout = Layout(GROUPS, C)
    assert layout.gid.tolist() == [0] * 3 + [1] * 5 + [2] * 16
    for bad in (((0, 1), (1, 2)), ((0,), ()), ((-1,),)):
        with pytest.raises(ValueError):
            PerGroup(bad)
    with pytest.raises(ValueError, match="out of range"):
        column_groups(PerGroup(((0, 30),)), C)


@pytest.mark.parametrize("spec", ["current_minmax", "allminmax"])
def test_global_minmax_matches_numpy(spec):
    data = batches()
    rows = np.concatenate([x[v] for x, v in data])
    lo, hi = estimate(spec, PerTensor(), data)
    assert (lo[0], hi[0]) == (rows.min(), rows.max())
    lo, hi = estimate(spec, PerChannel(), data)
    np.testing.assert_array_equal(lo, rows.min(axis=0))
    lo, hi = estimate(spec, GROUPS, data)
    np.testing.assert_array_equal(hi, [rows[:, list(g)].max() for g in GROUPS.groups])
    assert lo.dtype == np.float32 and lo.shape == (3,)


def test_running_minmax_is_ema_closed_form():
    data, m = batches(n_batches=4), 0.8
    lo, hi = estimate(f"running_minmax:momentum={m}", PerTensor(), data)
    mins = [x[v].min() for x, v in data]
    maxs = [x[v].max() for x, v in data]
    t = len(data)
    weights = [m ** (t - 1)] + [(1 - m) * m ** (t - 1 - i) for i in range(1, t)]
    # float64 EMA, float32 output: compare at float32 precision
    np.testing.assert_allclose(lo[0], np.dot(weights, mins), rtol=1e-6)
    np.testing.assert_allclose(hi[0], np.dot(weights, maxs), rtol=1e-6)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("p", [99.0, 99.99])
def test_percentile_within_one_bin_width(p, symmetric):
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((2000, 4)) * s for s in (0.01, 1.0, 5.0, 40.0)]  # forces re-ranging
    est = make_estimator(f"percentile:percentile={p},symmetric={symmetric}", PerTensor())
    for part in parts:
        est.update(part)
    lo, hi = est.range()
    all_ = np.concatenate(parts).ravel()
    vals = np.abs(all_) if symmetric else all_
    width = est.hist.width[0]  # the documented accuracy: one bin of the final histogram
    assert abs(hi[0] - np.percentile(vals, p)) <= width
    ref_lo = -np.percentile(vals, p) if symmetric else np.percentile(vals, 100 - p)
    assert abs(lo[0] - ref_lo) <= width


def test_histogram_rebinning_is_exact():
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((500, 3)) * s + o for s, o in ((0.1, 0), (1, 3), (4, -20), (50, 0))]
    est = make_estimator("percentile:bins=64", PerTensor())
    for part in parts:
        est.update(part)
    h = est.hist
    edges = h.lo[0] + h.width[0] * np.arange(h.bins + 1)
    assert est.hist.counts.sum() == 6000
    np.testing.assert_array_equal(h.counts[0], np.histogram(np.concatenate(parts), edges)[0])


@pytest.mark.parametrize("spec", SPECS)
def test_granularities_agree_and_padding_is_ignored(spec):
    data = batches()
    lo, hi = estimate(spec, GROUPS, data)
    lo_c, hi_c = estimate(spec, PerChannel(), data)
    # same arithmetic per group as per tensor on that group's columns: equal to float32 rounding
    for k, cols in enumerate(GROUPS.groups):
        ref = estimate(spec, PerTensor(), data, list(cols))
        np.testing.assert_allclose([lo[k], hi[k]], [ref[0][0], ref[1][0]], rtol=1e-6)
    for c in (0, 2, 9, 23):
        ref = estimate(spec, PerTensor(), data, [c])
        np.testing.assert_allclose([lo_c[c], hi_c[c]], [ref[0][0], ref[1][0]], rtol=1e-6)
    unpadded = [(x[v], None) for x, v in data]
    np.testing.assert_array_equal(estimate(spec, GROUPS, unpadded), (lo, hi))
    assert np.all(np.abs(hi) < 1e3)


@pytest.mark.parametrize("spec", SPECS + ["cross_entropy"])
@pytest.mark.parametrize("value", [0.0, 2.5, -3.0])
def test_constant_tensor_has_no_division_by_zero(spec, value):
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        lo, hi = estimate(spec, PerChannel(), [(np.full((50, 3), value, np.float32), None)] * 2)
    assert np.all(np.isfinite(lo)) and np.all(lo <= hi)
    if "symmetric" in spec:
        assert np.all(hi >= abs(value) * (1 - 1e-6))
    elif spec not in ("mse", "cross_entropy"):  # these widen to include 0, as the uint8 grid does
        np.testing.assert_array_equal([lo, hi], np.full((2, 3), value))


@pytest.mark.parametrize("spec", SPECS + ["cross_entropy"])
def test_bad_input_and_lifecycle(spec):
    est = make_estimator(spec, PerTensor())
    with pytest.raises(ValueError, match="before any update"):
        est.range()
    x = np.ones((4, 2), np.float32)
    est.update(x * 1e6, np.zeros(4, bool))  # all rows masked: a no-op
    with pytest.raises(ValueError, match="before any update"):
        est.range()
    for bad in (np.nan, np.inf):
        with pytest.raises(NonFiniteError):
            est.update(np.where(np.eye(4, 2) > 0, bad, x))
    est.update(np.where(np.eye(4, 2) > 0, np.nan, x), np.array([False, False, True, True]))
    assert est.range()[1][0] == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ValueError, match="columns"):
        est.update(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError):
        est.update(np.ones(4, np.float32))
    est.reset()
    with pytest.raises(ValueError, match="before any update"):
        est.range()
    est.update(np.ones((4, 3), np.float32))  # a reset estimator takes any column count
