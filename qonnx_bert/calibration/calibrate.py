"""Calibrate a model: sample sequences, run the collector, write a ranges table."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from qonnx_bert.calibration.collector import Target, collect
from qonnx_bert.calibration.estimators import (
    EstimatorSpec, PerChannel, PerTensor, RangeEstimator, make_estimator, parse_estimator_spec,
)
from qonnx_bert.calibration.ranges import RangeTable, model_fingerprint
from qonnx_bert.calibration.tensors import TensorLayout, quantizable_tensors
from qonnx_bert.encode import Encoder, length_batches
from qonnx_bert.modelinfo import read_info
from qonnx_bert.passes.prepare import prepare
from qonnx_bert.roles import find_roles

# Residual-stream roles whose per-embedding-dimension ranges are recorded (PEG's permutation needs them).
PER_CHANNEL_ROLES = ("layer.*.ffn.input", "layer.*.ffn.output", "layer.*.ffn.residual_sum")


@dataclass(frozen=True)
class Sequences:
    """The calibration sentences (pairs) and where they came from."""

    texts_a: list[str]
    texts_b: list[str] | None
    source: str
    seed: int

    def __len__(self) -> int:
        return len(self.texts_a)

    def pairs(self) -> list[list[str | None]]:
        """The sequences as [text_a, text_b or None] rows: stored in the ranges file for replay."""
        b = self.texts_b or [None] * len(self.texts_a)
        return [[a, bb] for a, bb in zip(self.texts_a, b, strict=True)]

    @classmethod
    def from_pairs(cls, pairs: list, source: str, seed: int) -> Sequences:
        texts_b = [p[1] for p in pairs] if pairs and pairs[0][1] is not None else None
        return cls([p[0] for p in pairs], texts_b, source, seed)


def sample_sequences(texts_a: Sequence[str], texts_b: Sequence[str] | None, n: int, seed: int, source: str) -> Sequences:
    """``n`` sequences drawn without replacement with a seeded generator."""
    pick = np.random.default_rng(seed).permutation(len(texts_a))[: min(n, len(texts_a))]
    return Sequences(
        [texts_a[i] for i in pick], None if texts_b is None else [texts_b[i] for i in pick], source, seed
    )


def sequence_batches(encoder: Encoder, sequences: Sequences, batch_size: int) -> tuple[Callable[[], Iterator[dict]], int]:
    """A re-iterable source of length-bucketed feeds over ``sequences``, and its batch count."""
    lengths = encoder.lengths(sequences.texts_a, sequences.texts_b)
    order = list(length_batches(lengths, encoder.static_batch or batch_size))

    def batches() -> Iterator[dict]:
        for idx in order:
            b = None if sequences.texts_b is None else [sequences.texts_b[i] for i in idx]
            yield encoder.feeds([sequences.texts_a[i] for i in idx], b)

    return batches, len(order)


def estimate_ranges(
    model: onnx.ModelProto, targets: list[Target], sequences: Sequences, *, batch_size: int = 8,
    tensors_per_pass: int | None = None, progress: bool = True,
) -> dict[str, RangeEstimator]:
    """Run ``model`` (prepared FP32) over ``sequences`` and return each target's filled estimator."""
    batches, count = sequence_batches(Encoder.from_model(model), sequences, batch_size)
    return collect(model, targets, batches, num_batches=count, tensors_per_pass=tensors_per_pass, progress=progress)


def per_tensor_targets(layouts: list[TensorLayout], spec: EstimatorSpec, labels: dict[str, str]) -> list[Target]:
    return [Target(lay, lambda: make_estimator(spec, PerTensor()), label=labels.get(lay.name, lay.name)) for lay in layouts]


def calibrate(
    model: onnx.ModelProto,
    sequences: Sequences,
    *,
    estimator: str = "current_minmax",
    batch_size: int = 8,
    tensors_per_pass: int | None = None,
    progress: bool = True,
) -> RangeTable:
    """Ranges of every quantizable activation of ``model`` over ``sequences``, padding excluded."""
    spec = parse_estimator_spec(estimator)
    prepared = prepare(model)
    roles = find_roles(prepared)
    layouts = quantizable_tensors(prepared)
    targets = per_tensor_targets(layouts, spec, roles.role_of())
    channel_roles = [r for p in PER_CHANNEL_ROLES for r in roles.select(p)]
    by_name = {lay.name: lay for lay in layouts}
    targets += [
        Target(by_name[roles.tensor(r)], lambda: make_estimator("current_minmax", PerChannel()), True, r)
        for r in channel_roles
    ]
    est = estimate_ranges(prepared, targets, sequences, batch_size=batch_size, tensors_per_pass=tensors_per_pass, progress=progress)
    return _table(model, roles, layouts, est, channel_roles, spec, sequences, batch_size)


def _table(model, roles, layouts, est, channel_roles, spec, sequences, batch_size) -> RangeTable:
    role_of = roles.role_of()
    tensors = {}
    for lay in layouts:
        lo, hi = est[lay.name].range()
        tensors[lay.name] = {"role": role_of.get(lay.name), "min": float(lo[0]), "max": float(hi[0])}
    per_channel = {}
    for role in channel_roles:
        lo, hi = est[roles.tensor(role) + "#channels"].range()
        per_channel[role] = {"tensor": roles.tensor(role), "min": lo.tolist(), "max": hi.tolist()}
    info = read_info(model)
    return RangeTable(
        model={"fingerprint": model_fingerprint(model), "source": info.source, "num_layers": roles.num_layers,
               "roles": roles.roles},
        calibration={"estimator": spec.name, "params": dict(spec.params), "num_sequences": len(sequences),
                     "source": sequences.source, "seed": sequences.seed, "batch_size": batch_size,
                     "padding": "excluded", "sequences": sequences.pairs()},
        tensors=tensors,
        per_channel=per_channel,
    )
