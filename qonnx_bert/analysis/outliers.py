"""Where the outliers are: the paper's Figure 2 for any BERT-style FP32 model.

The FFN input, output and residual sum of every layer are collected over the
first sequences, padding excluded. As in the paper, a value is an outlier when
it lies more than ``sigma`` (6) standard deviations from the mean of its tensor
(all its values over these sequences). Reported:

* per layer, the embedding dimensions of the residual sum that hold most
  outliers: their count, the largest |value| of the dimension, and the tokens
  the outliers sit on ([CLS], [SEP], ...), plus each layer's per-token ranges;
* a figure for one layer: (a) the range (max − min over hidden dimensions) of
  every token of the FFN input and output, (b) the outlier map, outliers per
  sequence and embedding dimension of the residual sum.

The default layer is the one whose residual sum holds most outliers: which
layers are worst depends on the model (BERT-base: the last; MiniLM: the first).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx

from qonnx_bert.calibration.tensors import MASK_INPUT
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.runtime import exposing_session
from qonnx_bert.graph.prepare import prepare
from qonnx_bert.graph.roles import find_roles
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.sequences import Sequences, sequence_feeds

ROLES = ("input", "output", "residual_sum")
SEPARATORS = {"[CLS]", "[SEP]", "<s>", "</s>"}  # marked in the per-token plot


@dataclass(frozen=True)
class DimStat:
    dim: int
    count: int
    max_abs: float
    tokens: tuple[tuple[str, int], ...]  # the most frequent tokens at this dim's outliers, with counts


@dataclass(frozen=True)
class TensorOutliers:
    """Outliers of one tensor (layer, role) over the scanned tokens."""

    layer: int
    role: str
    mean: float
    std: float
    counts: np.ndarray  # (sequences, hidden): outliers per sequence and dimension
    max_abs: np.ndarray  # (hidden,)
    token_ranges: np.ndarray  # (tokens,): max - min over the hidden dimensions
    dims: tuple[DimStat, ...]  # dimensions with outliers, most first

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def top_share(self, k: int) -> float:
        return sum(d.count for d in self.dims[:k]) / self.total if self.total else 0.0


@dataclass(frozen=True)
class OutlierScan:
    sequences: Sequences
    sigma: float
    tokens: list[list[str]]  # per sequence, its real tokens
    tensors: dict[tuple[int, str], TensorOutliers]
    num_layers: int

    def worst_layer(self, role: str = "residual_sum") -> int:
        return max(range(self.num_layers), key=lambda i: (self.tensors[(i, role)].total, -i))


def _collect(
    model: onnx.ModelProto, sequences: Sequences
) -> tuple[dict[tuple[int, str], list[np.ndarray]], list[list[str]], int]:
    """Per (layer, role), each sequence's (tokens, hidden) values at real positions; and the token strings."""
    prepared = prepare(model)
    roles = find_roles(prepared)
    names = {(i, r): roles.tensor(f"layer.{i}.ffn.{r}") for i in range(roles.num_layers) for r in ROLES}
    order = list(dict.fromkeys(names.values()))
    session = exposing_session(prepared, order)
    inputs = {i.name for i in session.get_inputs()}
    encoder = Encoder.from_model(model)
    values: dict[tuple[int, str], list[np.ndarray]] = {k: [] for k in names}
    tokens = []
    for feeds in sequence_feeds(encoder, sequences):
        got = dict(zip(order, session.run(order, {k: v for k, v in feeds.items() if k in inputs}), strict=True))
        real = feeds[MASK_INPUT][0].astype(bool) if MASK_INPUT in feeds else np.ones(feeds["input_ids"].shape[1], bool)
        tokens.append([encoder.tokenizer.id_to_token(int(t)) or str(t) for t in feeds["input_ids"][0][real]])
        for key, name in names.items():
            values[key].append(got[name][0][real])
    return values, tokens, roles.num_layers


def _dim_stats(outlier: np.ndarray, x: np.ndarray, flat_tokens: list[str]) -> tuple[DimStat, ...]:
    counts = outlier.sum(axis=0)
    max_abs = np.abs(x).max(axis=0)
    stats = []
    for dim in np.argsort(-counts, kind="stable"):
        if counts[dim] == 0:
            break
        seen = Counter(flat_tokens[t] for t in np.flatnonzero(outlier[:, dim]))
        stats.append(DimStat(int(dim), int(counts[dim]), float(max_abs[dim]), tuple(seen.most_common(3))))
    return tuple(stats)


def _analyse(layer: int, role: str, per_seq: list[np.ndarray], flat_tokens: list[str], sigma: float) -> TensorOutliers:
    x = np.concatenate(per_seq).astype(np.float64)
    mean, std = float(x.mean()), float(x.std())
    outlier = np.abs(x - mean) > sigma * std
    seq_of = np.repeat(np.arange(len(per_seq)), [len(s) for s in per_seq])
    counts = np.stack([outlier[seq_of == s].sum(axis=0) for s in range(len(per_seq))])
    return TensorOutliers(
        layer,
        role,
        mean,
        std,
        counts,
        np.abs(x).max(axis=0),
        x.max(axis=1) - x.min(axis=1),
        _dim_stats(outlier, x, flat_tokens),
    )


def scan(model: onnx.ModelProto, sequences: Sequences, *, sigma: float = 6.0) -> OutlierScan:
    """Outlier statistics of every layer's FFN input, output and residual sum over ``sequences``."""
    if sigma <= 0:
        raise UsageError("`sigma` must be positive")
    values, tokens, num_layers = _collect(model, sequences)
    flat = [t for seq in tokens for t in seq]
    tensors = {key: _analyse(*key, per_seq, flat, sigma) for key, per_seq in values.items()}
    return OutlierScan(sequences, sigma, tokens, tensors, num_layers)


def _tokens_text(stat: DimStat) -> str:
    return ", ".join(f"{tok}×{n}" for tok, n in stat.tokens)


def render(result: OutlierScan, top: int = 5) -> str:
    """Markdown: per layer the per-token ranges and outlier totals, then the top residual-sum dimensions."""
    n_tokens = sum(len(t) for t in result.tokens)
    head = (
        f"Outliers: values beyond {result.sigma:g}σ of their tensor, over {len(result.tokens)} sequences "
        f"({result.sequences.source}, {n_tokens} tokens, padding excluded)."
    )
    summary = [
        "| layer | FFN input range/token (median, max) | FFN output range/token (median, max) | residual-sum "
        "outliers | "
        f"in top {top} dims |",
        "|---:|---|---|---:|---:|",
    ]
    dims = ["| layer | dim | outliers | max \\|x\\| | tokens |", "|---:|---:|---:|---:|---|"]
    for layer in range(result.num_layers):
        inp, out, res = (result.tensors[(layer, r)] for r in ROLES)
        ranges = [f"{np.median(t.token_ranges):.3g}, {t.token_ranges.max():.3g}" for t in (inp, out)]
        summary.append(f"| {layer} | {ranges[0]} | {ranges[1]} | {res.total} | {100 * res.top_share(top):.0f}% |")
        dims += [
            f"| {layer} | {d.dim} | {d.count} | {d.max_abs:.3g} | {_tokens_text(d)} |" for d in res.dims[:top]
        ] or [f"| {layer} | — | 0 | — | — |"]
    return "\n\n".join(
        [head, "\n".join(summary), f"Top {top} outlier dimensions of the FFN residual sum per layer:", "\n".join(dims)]
    )


def plot(result: OutlierScan, layer: int, path: str, *, role: str = "residual_sum", max_tokens: int = 256) -> None:
    """The paper's Figure 2 for ``layer``: per-token FFN input/output ranges, and the outlier map of ``role``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inp, out, res = (result.tensors[(layer, r)] for r in ("input", "output", role))
    flat = [t for seq in result.tokens for t in seq][:max_tokens]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7))
    x = np.arange(len(flat))
    top.plot(x, inp.token_ranges[: len(flat)], label="FFN input", lw=1)
    top.plot(x, out.token_ranges[: len(flat)], label="FFN output", lw=1)
    for i, tok in enumerate(flat):
        if tok in SEPARATORS:
            top.axvline(i, color="0.85", lw=0.5, zorder=0)
    top.set_xlabel(f"token (first sequences, [CLS]/[SEP] marked in grey; {len(flat)} tokens)")
    top.set_ylabel("range (max − min over hidden dims)")
    top.set_title(f"(a) layer {layer}: per-token ranges of the FFN input and output")
    top.legend()
    image = bottom.imshow(res.counts, aspect="auto", interpolation="nearest", cmap="Reds")
    bottom.set_xlabel("embedding dimension")
    bottom.set_ylabel("sequence")
    bottom.set_title(
        f"(b) layer {layer}: outliers (> {result.sigma:g}σ) of the FFN {role.replace('_', ' ')} per sequence and "
        "dimension"
    )
    fig.colorbar(image, ax=bottom, label="outliers")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
