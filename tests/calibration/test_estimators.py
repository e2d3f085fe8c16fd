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
    Layout,
    NonFiniteError,
    PerChannel,
    PerGroup,
    PerTensor,
    column_groups,
    make_estimator,
)

C = 24
GROUPS = PerGroup(((0, 5, 7), (1, 2, 3, 4, 6), tuple(range(8, 24))))  # uneven PEG-style groups
SPECS = [
    "current_minmax",
    "allminmax",
    "running_minmax",
    "percentile",
    "percentile:symmetric=true",
    "mse",
    "mse:symmetric=true",
]


def batches(n_batches: int = 3, rows: int = 400, seed: int = 0):
    """``(x, valid)`` batches with planted outlier columns and masked huge padding rows."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        x = rng.standard_normal((rows, C)).astype(np.float32)
        hot = rng.choice(rows, 4, replace=False)
        x[np.ix_(hot, [2, 9])] = rng.uniform(10, 100, (4, 2)) * rng.choice([-1, 1], (4, 2))
        valid = np.ones(rows, bool)
        valid[-rows // 5 :] = False
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


def test_histogram_sample_is_a_coprime_stride_within_budget():
    from qonnx_bert.calibration.estimators.histogram import sample_stride

    assert sample_stride(1000, 65536) == 1 and sample_stride(10**6, 0) == 1
    for values in (8 * 128 * 768, 8 * 12 * 128 * 128, 10**7 + 3):
        s = sample_stride(values, 65536)
        assert s >= 5 and all(s % d for d in range(2, s)) and -(-values // s) <= 65536


def _full_and_sampled(spec, batches):
    full = make_estimator(spec + (",sample=0" if ":" in spec else ":sample=0"), PerTensor())
    sampled = make_estimator(spec, PerTensor())
    for x in batches:
        full.update(x.reshape(-1, 1))
        sampled.update(x.reshape(-1, 1))
    return full, sampled


def test_sampled_histogram_sees_every_hidden_dimension():
    rng = np.random.default_rng(0)
    # BERT-like layout: (tokens, hidden 768) flattened, one hidden dimension 50x larger. A
    # stride sharing a factor with 768 would see that dimension never, or on every sample.
    batches = [rng.standard_normal((256, 768)).astype(np.float32) for _ in range(6)]
    for x in batches:
        x[:, 5] *= 50.0
    full, sampled = _full_and_sampled("percentile", batches)
    assert full.hist.counts.sum() == 6 * 256 * 768 and sampled.hist.counts.sum() <= 6 * 65536
    assert sampled.hist.dmax[0] == full.hist.dmax[0]  # the edges see every value
    outer = lambda h: h.counts[0][np.abs(h.centres()[0]) > 10].sum() / h.counts.sum()  # noqa: E731
    # mass beyond |x| > 10 is dimension 5 alone (~0.11%); ~440 of the sampled values land there
    assert outer(full.hist) == pytest.approx(outer(sampled.hist), rel=0.2)


def _mixture_batches():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(400_000).astype(np.float32) * (1 + i % 3) for i in range(6)]


def test_sampled_percentile_matches_the_full_one():
    full, sampled = _full_and_sampled("percentile:percentile=99.9", _mixture_batches())
    # 6 x 65536 of 2.4M values binned: a random sample of that size moves the 99.9th percentile ~1%
    np.testing.assert_allclose(sampled.range(), full.range(), rtol=0.03)


def test_sampled_mse_range_is_nearly_optimal_on_all_the_data():
    from qonnx_bert.calibration.estimators import hist_mse

    full, sampled = _full_and_sampled("mse", _mixture_batches())
    cost = lambda r: hist_mse(full.hist, r[0][:, None], r[1][:, None], 8, False)[0, 0]  # noqa: E731
    # the MSE objective is flat near its optimum: the sampled range moves ~4%, its cost ~2% (measured)
    assert cost(sampled.range()) <= 1.05 * cost(full.range())
