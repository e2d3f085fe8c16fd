"""Calibrate a model: sample sequences, plan what to estimate (``plan.py``), run the collector, build the table."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import onnx

from qonnx_bert.calibration.collector import Target, collect
from qonnx_bert.calibration.estimators import EstimatorSpec, PerTensor, RangeEstimator, make_estimator
from qonnx_bert.calibration.grouped import GroupedRangeTable
from qonnx_bert.calibration.memory import DEFAULT_MAX_MEMORY_MB
from qonnx_bert.calibration.plan import CalibrationPlan, group_key, plan_calibration
from qonnx_bert.calibration.recipes import Recipe, spec_text
from qonnx_bert.calibration.segments import SplitModel
from qonnx_bert.calibration.tensors import TensorLayout
from qonnx_bert.core.modelinfo import read_info
from qonnx_bert.graph.prepare import prepare
from qonnx_bert.inputs.encode import Encoder, length_batches
from qonnx_bert.inputs.sequences import Sequences


def sequence_batches(
    encoder: Encoder, sequences: Sequences, batch_size: int
) -> tuple[Callable[[], Iterator[dict]], int]:
    """A re-iterable source of length-bucketed feeds over ``sequences``, and its batch count."""
    lengths = encoder.lengths(sequences.texts_a, sequences.texts_b)
    order = list(length_batches(lengths, encoder.static_batch or batch_size))

    def batches() -> Iterator[dict]:
        for idx in order:
            b = None if sequences.texts_b is None else [sequences.texts_b[i] for i in idx]
            yield encoder.feeds([sequences.texts_a[i] for i in idx], b)

    return batches, len(order)


def batch_shape(encoder: Encoder, sequences: Sequences, batch_size: int) -> tuple[int, int]:
    """(sequences, tokens) of the largest batch: what a memory budget is sized for."""
    if encoder.info.static_shape:
        return encoder.info.static_shape
    longest = int(encoder.lengths(sequences.texts_a, sequences.texts_b).max())
    return min(batch_size, len(sequences)), longest


def estimate_ranges(
    model: onnx.ModelProto | SplitModel,
    targets: list[Target],
    sequences: Sequences,
    *,
    batch_size: int = 8,
    tensors_per_pass: int | None = None,
    max_memory: float | None = DEFAULT_MAX_MEMORY_MB,
    progress: bool = True,
) -> dict[str, RangeEstimator]:
    """Run ``model`` (prepared FP32) over ``sequences`` and return each target's filled estimator.

    ``max_memory`` (MB) bounds the activations one batch exposes at a time (see ``collector``;
    None: expose everything in one segment).
    """
    graph = model.graph if isinstance(model, SplitModel) else model
    encoder = Encoder.from_model(graph)
    batches, count = sequence_batches(encoder, sequences, batch_size)
    return collect(
        model,
        targets,
        batches,
        num_batches=count,
        tensors_per_pass=tensors_per_pass,
        max_memory=max_memory,
        batch_shape=batch_shape(encoder, sequences, batch_size),
        progress=progress,
    )


def per_tensor_targets(layouts: list[TensorLayout], spec: EstimatorSpec, labels: dict[str, str]) -> list[Target]:
    return [
        Target(lay, lambda: make_estimator(spec, PerTensor()), label=labels.get(lay.name, lay.name)) for lay in layouts
    ]


def calibrate(
    model: onnx.ModelProto | SplitModel,
    sequences: Sequences,
    *,
    estimator: str | None = None,
    recipe: Recipe | Mapping | str | Path | None = None,
    groups: Mapping[str, Sequence[Sequence[int]]] | None = None,
    batch_size: int = 8,
    tensors_per_pass: int | None = None,
    max_memory: float | None = DEFAULT_MAX_MEMORY_MB,
    progress: bool = True,
) -> GroupedRangeTable:
    """Ranges of every quantizable activation of ``model`` over ``sequences``, padding excluded.

    ``recipe`` picks an estimator per role (default: ``estimator``, else current min-max, for
    all); ``groups`` asks for per-group ranges of roles (``{role: [[dims], ...]}``);
    ``max_memory`` (MB) bounds the activations one batch exposes at a time.
    """
    split = model if isinstance(model, SplitModel) else SplitModel.from_proto(model)
    prepared = split.edit_small(prepare)
    plan = plan_calibration(prepared.graph, estimator=estimator, recipe=recipe, groups=groups)
    est = estimate_ranges(
        prepared,
        plan.targets(),
        sequences,
        batch_size=batch_size,
        tensors_per_pass=tensors_per_pass,
        max_memory=max_memory,
        progress=progress,
    )
    return _table(split, plan, est, sequences, batch_size)


def _table(
    split: SplitModel, plan: CalibrationPlan, est: dict[str, RangeEstimator], sequences: Sequences, batch_size: int
) -> GroupedRangeTable:
    role_of = plan.roles.role_of()
    tensors = {}
    for lay in plan.layouts:
        lo, hi = est[plan.shared.get(lay.name, lay.name)].range()
        tensors[lay.name] = {
            "role": role_of.get(lay.name),
            "min": float(lo[0]),
            "max": float(hi[0]),
            "estimator": spec_text(plan.specs[lay.name]),
        }
    per_channel = {}
    for role in plan.channel_roles:
        tensor = plan.roles.tensor(role)
        lo, hi = est[tensor + "#channels"].range()
        per_channel[role] = {"tensor": tensor, "estimator": "current_minmax", "min": lo.tolist(), "max": hi.tolist()}
    per_group = {}
    for role, granularity in plan.groups.items():
        tensor = plan.roles.tensor(role)
        lo, hi = est[group_key(role)].range()
        per_group[role] = {
            "tensor": tensor,
            "estimator": spec_text(plan.specs[tensor]),
            "groups": [list(g) for g in granularity.groups],
            "min": lo.tolist(),
            "max": hi.tolist(),
        }
    info = read_info(split.graph)
    default = plan.recipe.default
    return GroupedRangeTable(
        model={
            "fingerprint": split.fingerprint,
            "source": info.source,
            "num_layers": plan.roles.num_layers,
            "roles": plan.roles.roles,
        },
        calibration={
            "estimator": default.name,
            "params": dict(default.params),
            "recipe": plan.recipe.to_json(),
            "num_sequences": len(sequences),
            "source": sequences.source,
            "seed": sequences.seed,
            "batch_size": batch_size,
            "padding": "excluded",
            "sequences": sequences.pairs(),
        },
        tensors=tensors,
        per_channel=per_channel,
        per_group=per_group,
    )
