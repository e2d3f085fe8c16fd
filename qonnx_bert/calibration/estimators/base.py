"""Shared vocabulary of the range estimators: granularities, the column layout, row masking.

Why one module: the paper's reference code let every estimator re-implement per-channel
and per-group reduction, and the copies drifted. Here the column layout of a granularity
is computed once (``column_groups`` / ``Layout``) and every estimator reduces through it.
Estimators see activations as ``(N, C)``: rows are tokens, columns embedding dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, Union, runtime_checkable

import numpy as np


class NonFiniteError(ValueError):
    """NaN or Inf in calibration data; the collector adds the tensor name."""


@dataclass(frozen=True)
class PerTensor:
    """One range for the whole tensor."""


@dataclass(frozen=True)
class PerChannel:
    """One range per column of the ``(N, C)`` input."""


@dataclass(frozen=True)
class PerGroup:
    """One range per index set over columns (PEG groups); sets may be uneven, must be disjoint."""

    groups: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        groups = tuple(tuple(int(i) for i in g) for g in self.groups)
        flat = [i for g in groups for i in g]
        if not groups or any(not g for g in groups):
            raise ValueError("PerGroup needs at least one group and no empty group")
        if len(set(flat)) != len(flat) or min(flat) < 0:
            raise ValueError("PerGroup groups must hold disjoint non-negative column indices")
        object.__setattr__(self, "groups", groups)


Granularity = Union[PerTensor, PerChannel, PerGroup]


def column_groups(granularity: Granularity, n_columns: int) -> list[np.ndarray]:
    """The column index arrays, one per output range, for ``n_columns`` columns."""
    if isinstance(granularity, PerTensor):
        return [np.arange(n_columns)]
    if isinstance(granularity, PerChannel):
        return [np.array([c]) for c in range(n_columns)]
    if isinstance(granularity, PerGroup):
        if max(max(g) for g in granularity.groups) >= n_columns:
            raise ValueError(f"PerGroup column index out of range for {n_columns} columns")
        return [np.array(g) for g in granularity.groups]
    raise TypeError(f"granularity must be PerTensor, PerChannel or PerGroup, not {granularity!r}")


class Layout:
    """``column_groups`` bound to a column count: gathers columns group by group, reduces per group."""

    def __init__(self, granularity: Granularity, n_columns: int) -> None:
        groups = column_groups(granularity, n_columns)
        self.n_columns = n_columns
        self.n_groups = len(groups)
        self.order = np.concatenate(groups)
        self.starts = np.cumsum([0] + [len(g) for g in groups[:-1]])
        self.gid = np.repeat(np.arange(self.n_groups), [len(g) for g in groups])
        self._identity = np.array_equal(self.order, np.arange(n_columns))

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Columns in group order, so group ``k`` is the slice ``starts[k]:starts[k+1]``."""
        return rows if self._identity else rows[:, self.order]

    def minmax(self, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-group min and max of gathered columns, shape ``(n_groups,)`` each."""
        lo = np.minimum.reduceat(cols.min(axis=0), self.starts)
        hi = np.maximum.reduceat(cols.max(axis=0), self.starts)
        return lo, hi


def valid_rows(x: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray | None:
    """The unmasked rows of ``x`` as floats, or None when every row is masked out (finiteness
    is checked on the batch bounds, ``check_finite``)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"estimator input must be 2-D (rows, columns), got shape {x.shape}")
    if valid is not None:
        valid = np.asarray(valid)
        if valid.dtype != bool or valid.shape != (x.shape[0],):
            raise ValueError(f"valid must be a bool mask of shape ({x.shape[0]},)")
        x = x[valid]
    if x.shape[0] == 0 or x.shape[1] == 0:
        return None
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    return x


def check_finite(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    """NaN or Inf anywhere in ``rows`` shows in its per-group bounds ``lo``/``hi`` (min and
    max propagate NaN), so a batch costs no extra pass; the count is taken only on failure."""
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise NonFiniteError(
            f"{np.count_nonzero(~np.isfinite(rows))} non-finite value(s) (NaN or Inf) among {rows.size}"
        )


@runtime_checkable
class RangeEstimator(Protocol):
    """What the collector drives: feed batches with ``update``, read ``range``.

    Per tensor, the collector feeds every valid element as one column; an estimator that
    needs each row of the last axis together (class logits) sets ``whole_rows = True``.
    """

    name: ClassVar[str]

    def update(self, x: np.ndarray, valid: np.ndarray | None = None) -> None: ...
    def range(self) -> tuple[np.ndarray, np.ndarray]: ...
    def reset(self) -> None: ...


class BaseEstimator:
    """Masking, validation and layout binding; subclasses implement ``_update``/``_range``/``_clear``.

    During ``_update``, ``self.bounds`` is the batch's per-group ``(min, max)``: computed once
    here (it is also the NaN/Inf check), so estimators need not reduce the batch again.
    """

    name: ClassVar[str] = ""

    def __init__(self, granularity: Granularity) -> None:
        if not isinstance(granularity, (PerTensor, PerChannel, PerGroup)):
            raise TypeError(f"granularity must be PerTensor, PerChannel or PerGroup, not {granularity!r}")
        self.granularity = granularity
        self.reset()

    def update(self, x: np.ndarray, valid: np.ndarray | None = None) -> None:
        rows = valid_rows(x, valid)
        if rows is None:
            return
        if self.layout is None:
            self.layout = Layout(self.granularity, rows.shape[1])
        elif rows.shape[1] != self.layout.n_columns:
            raise ValueError(f"got {rows.shape[1]} columns after {self.layout.n_columns}")
        cols = self.layout.gather(rows)
        self.bounds = self.layout.minmax(cols)  # this batch's per-group (min, max), for _update to reuse
        check_finite(rows, *self.bounds)
        self._update(cols)

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        if self.layout is None:
            raise ValueError(f"{self.name}: range() before any update with unmasked rows")
        lo, hi = self._range()
        return np.asarray(lo, np.float32), np.asarray(hi, np.float32)

    def reset(self) -> None:
        self.layout: Layout | None = None
        self._clear()

    def _update(self, cols: np.ndarray) -> None:  # cols: valid rows, columns in layout order
        raise NotImplementedError

    def _range(self) -> tuple[np.ndarray, np.ndarray]:  # called only after an update
        raise NotImplementedError

    def _clear(self) -> None:  # drop accumulated statistics
        raise NotImplementedError
