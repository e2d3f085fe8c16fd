"""The cross-entropy estimator for class logits against SciPy and a brute-force search.

The objective is checked against ``scipy.special.softmax`` + ``scipy.stats.entropy`` (an
independent KL implementation); the searched range against an exhaustive 2-D grid over
the same fractions of the observed range, at 4x the coarse grid's resolution.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import entropy

from qonnx_bert.calibration.estimators import CrossEntropy, PerGroup, PerTensor, make_estimator, quant_dequant
from qonnx_bert.core.errors import UsageError


def logits(rows: int = 400, classes: int = 3, seed: int = 0) -> np.ndarray:
    """Class logits with a few confident rows 10-20x larger (what clipping should give up)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, classes)) * 1.5
    hot = rng.choice(rows, 4, replace=False)
    x[hot, 0] = rng.uniform(15, 30, 4)
    return x.astype(np.float32)


def kl_reference(x: np.ndarray, lo: float, hi: float, bits: int) -> float:
    q = quant_dequant(x.astype(np.float64), lo, hi, bits, False)
    return float(np.mean(entropy(softmax(x.astype(np.float64), axis=1), softmax(q, axis=1), axis=1)))


@pytest.mark.parametrize("bits", [8, 4])
def test_range_matches_brute_force_and_beats_minmax(bits):
    x = logits()
    est = CrossEntropy(PerTensor(), bits=bits)
    for part in np.array_split(x, 3):
        est.update(part)
    lo, hi = (float(v[0]) for v in est.range())
    found = kl_reference(x, lo, hi, bits)
    # the objective the search minimised is the SciPy KL of the range it returned
    np.testing.assert_allclose(est._objective(np.array([[lo]]), np.array([[hi]]))[0, 0], found, rtol=1e-9)
    lo0, hi0 = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    fractions = np.arange(1, 81) / 80
    brute = min(kl_reference(x, a * lo0, b * hi0, bits) for a in fractions for b in fractions)
    assert found <= kl_reference(x, lo0, hi0, bits)  # min-max is a candidate: never worse
    assert found <= brute * 1.05 + 1e-12
    assert hi < 0.9 * x.max()  # the confident outlier logits are clipped, not resolved


def test_per_group_rounds_each_group_alone():
    x = logits(classes=4)
    groups = PerGroup(((0, 1), (2, 3)))
    est = make_estimator("cross_entropy", groups)
    est.update(x)
    lo, hi = est.range()
    for g, cols in enumerate(groups.groups):
        other = [c for c in range(4) if c not in cols]

        def kl(a, b, cols=list(cols), other=other):
            q = x.astype(np.float64).copy()
            q[:, cols] = quant_dequant(q[:, cols], a, b, 8, False)
            return float(np.mean(entropy(softmax(x.astype(np.float64), axis=1), softmax(q, axis=1), axis=1)))

        lo0, hi0 = min(float(x[:, cols].min()), 0.0), max(float(x[:, cols].max()), 0.0)
        assert kl(lo[g], hi[g]) <= kl(lo0, hi0)


def test_reservoir_keeps_a_bounded_seeded_sample():
    x = logits(rows=1000)
    runs = []
    for _ in range(2):
        est = make_estimator("cross_entropy:max_rows=100,seed=3", PerTensor())
        for part in np.array_split(x, 7):
            est.update(part)
        runs.append(est.rows.copy())
        assert est.seen == 1000 and est.rows.shape == (100, 3)
    np.testing.assert_array_equal(*runs)
    kept = {tuple(r) for r in x.astype(np.float64)}
    assert all(tuple(r) in kept for r in runs[0])
    assert len({tuple(r) for r in runs[0]}) == 100
    assert np.mean(np.isin(runs[0][:, 0], x[900:, 0])) > 0  # late rows get in, not only the first 100


def test_bad_input():
    with pytest.raises(ValueError, match="2 or more columns"):
        make_estimator("cross_entropy", PerTensor()).update(np.ones((5, 1), np.float32))
    with pytest.raises(UsageError):
        make_estimator("cross_entropy:max_rows=0", PerTensor())
    with pytest.raises(UsageError):
        make_estimator("cross_entropy:bits=1", PerTensor())
