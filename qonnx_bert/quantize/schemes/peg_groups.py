"""PEG groups: which embedding dimensions share one quantization range.

Per layer, the per-dimension calibration ranges of the FFN input, output and
residual sum give each dimension j a range ``r_j = max_j - min_j`` (the largest
of the three tensors', padding excluded). Groups are index sets over the
hidden dimensions; the lowering (``passes.peg_split_ffn``) permutes the
dimensions so that each group is contiguous.

* ``equal`` (the paper): sort dimensions by range (``permute``) or keep their
  order, then cut into K groups of equal size (sizes differ by at most one when
  K does not divide the hidden size).
* ``outlier`` (beyond the paper): over the range-sorted dimensions, choose the K
  contiguous segments that minimise the total quantization noise
  ``sum_g |G_g| * (max_{j in G_g} hi_j - min_{j in G_g} lo_j)^2`` (the noise power
  of a uniform grid is proportional to its step squared), by dynamic
  programming. A handful of outlier dimensions of very different size then get
  small groups of their own instead of sharing a range with ~60 ordinary ones.

With ``--permutation model`` every layer forms its groups over one model-wide order
(``model_order``) instead of its own sort, so one permutation, folded into the weights
(``passes.permute_stream``), makes every layer's groups contiguous at no run-time cost.
"""

from __future__ import annotations

import numpy as np

from qonnx_bert.quantize.config import ConfigError


def check_group_count(k: int, hidden: int) -> None:
    if k < 1 or k > hidden:
        raise ConfigError([("groups", f"is {k}: out of range for this model, use 1 <= K <= hidden size ({hidden})")])


def equal_groups(ranges: np.ndarray, k: int, permute: bool) -> list[np.ndarray]:
    """The paper's K equal groups, over range-sorted (``permute``) or original order."""
    check_group_count(k, len(ranges))
    order = np.argsort(ranges, kind="stable") if permute else np.arange(len(ranges))
    return [np.sort(chunk) if not permute else chunk for chunk in np.array_split(order, k)]


def _segment_costs(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """cost[a, b] = (b - a) * (max hi[a:b] - min lo[a:b])^2 for a < b (sorted order)."""
    n = len(lo)
    cost = np.full((n + 1, n + 1), np.inf)
    for a in range(n):
        top = np.maximum.accumulate(hi[a:])
        bottom = np.minimum.accumulate(lo[a:])
        cost[a, a + 1 :] = np.arange(1, n - a + 1) * (top - bottom) ** 2
    return cost


def segment_groups(lo: np.ndarray, hi: np.ndarray, k: int, order: np.ndarray) -> list[np.ndarray]:
    """K contiguous segments of the dimensions in ``order`` with the least total noise."""
    check_group_count(k, len(lo))
    cost = _segment_costs(lo[order], hi[order])
    n = len(order)
    best = np.full((k + 1, n + 1), np.inf)
    cut = np.zeros((k + 1, n + 1), dtype=int)
    best[0, 0] = 0.0
    for g in range(1, k + 1):
        for b in range(g, n + 1):
            totals = best[g - 1, :b] + cost[:b, b]
            cut[g, b] = int(np.argmin(totals))
            best[g, b] = totals[cut[g, b]]
    bounds, b = [], n
    for g in range(k, 0, -1):
        bounds.append((cut[g, b], b))
        b = cut[g, b]
    return [order[a:b] for a, b in reversed(bounds)]


def outlier_groups(lo: np.ndarray, hi: np.ndarray, k: int) -> list[np.ndarray]:
    """K contiguous segments of the range-sorted dimensions with the least total noise."""
    return segment_groups(lo, hi, k, np.argsort(hi - lo, kind="stable"))


def model_order(ranges: list[np.ndarray]) -> np.ndarray:
    """One order of the hidden dimensions for every layer (``--permutation model``).

    Dimensions sorted by their largest range relative to their layer's median range:
    a dimension that is an outlier in any layer goes to the end, the worst last, so each
    layer's outliers sit in a tail that contiguous groups can isolate.
    """
    relative = np.max([r / max(float(np.median(r)), 1e-12) for r in ranges], axis=0)
    return np.argsort(relative, kind="stable")


def layer_groups(
    lo: np.ndarray, hi: np.ndarray, k: int, grouping: str, permute: bool, order: np.ndarray | None = None
) -> list[np.ndarray]:
    """The groups of one layer from its per-dimension (min, max); with ``order`` (one
    model-wide order), contiguous segments of that order instead of this layer's sort."""
    if order is None:
        return equal_groups(hi - lo, k, permute) if grouping == "equal" else outlier_groups(lo, hi, k)
    check_group_count(k, len(lo))
    return np.array_split(order, k) if grouping == "equal" else segment_groups(lo, hi, k, order)


# Split a layer's GELU output only where groups cut its quantization noise this much: on the
# MiniLM-L6 checkpoints, layers with one outlier unit gain well above it, layers without one
# stay below (not worth K more MatMuls).
MIN_INTERMEDIATE_GAIN = 8.0


def intermediate_groups(lo: np.ndarray, hi: np.ndarray, k: int) -> list[np.ndarray] | None:
    """Outlier-aware groups of a layer's intermediate (GELU output) units, or None where
    one group is nearly as good (see ``MIN_INTERMEDIATE_GAIN``)."""
    if not 1 <= k <= len(lo):
        why = f"is {k}: out of range for this model, use 1 <= J <= intermediate size ({len(lo)})"
        raise ConfigError([("intermediate_groups", why)])
    if k == 1:
        return None
    groups = outlier_groups(lo, hi, k)
    one = quantization_noise(lo, hi, [np.arange(len(lo))])
    return groups if one >= MIN_INTERMEDIATE_GAIN * quantization_noise(lo, hi, groups) else None


def quantization_noise(lo: np.ndarray, hi: np.ndarray, groups: list[np.ndarray]) -> float:
    """The objective ``outlier`` minimises, for comparing groupings."""
    return float(sum(len(g) * (hi[g].max() - lo[g].min()) ** 2 for g in groups))
