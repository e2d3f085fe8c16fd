"""The PEG grouping DP against a brute-force search over every way to cut the sorted dimensions."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from qonnx_bert.quantize.schemes.peg_groups import quantization_noise, segment_groups


def _brute_force(lo: np.ndarray, hi: np.ndarray, k: int, order: np.ndarray) -> float:
    """The least total noise over all C(n-1, k-1) cuts of ``order`` into k non-empty contiguous segments."""
    n = len(order)
    best = np.inf
    for cuts in combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        groups = [order[a:b] for a, b in zip(bounds, bounds[1:])]
        best = min(best, quantization_noise(lo, hi, groups))
    return best


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_dp_finds_the_least_noise_cut(seed, k):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(k, 10))
    lo = -rng.uniform(0.5, 2, n)
    hi = rng.uniform(0.5, 2, n)
    hi[rng.integers(n)] *= rng.choice([1, 20, 100])  # an outlier dimension in most cases
    order = rng.permutation(n)
    groups = segment_groups(lo, hi, k, order)
    assert len(groups) == k and np.array_equal(np.concatenate(groups), order)  # contiguous, in order, all dims
    # Exact up to float summation order (the DP adds segment costs in another order than the reference).
    assert quantization_noise(lo, hi, groups) == pytest.approx(_brute_force(lo, hi, k, order), rel=1e-12)
