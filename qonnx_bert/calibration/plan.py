"""What a calibration estimates: the estimator of every tensor, and which estimates are shared.

The estimator of each quantized activation comes from a ``Recipe`` (``recipes.py``): role
globs to estimator specs plus a default. Tensors that are pure data movement of another
(Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Identity) hold the same values, so when
both get the same estimator the copy shares its source's range instead of being exposed
and estimated again (ONNX Runtime's QDQ quantizer gives such outputs their input's scale
anyway). The FFN residual-stream roles also get per-embedding-dimension min/max (PEG's
permutation needs them), the GELU output per-unit min/max (PEG's intermediate groups), and
roles asked for get per-group ranges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import onnx

from qonnx_bert.calibration.collector import Target
from qonnx_bert.calibration.estimators import EstimatorSpec, PerChannel, PerGroup, PerTensor, make_estimator
from qonnx_bert.calibration.memory import tensor_shapes
from qonnx_bert.calibration.recipes import Recipe, load_recipe, parse_recipe
from qonnx_bert.calibration.tensors import TensorLayout, quantizable_tensors
from qonnx_bert.core.errors import UsageError
from qonnx_bert.graph.ops import LAYOUT_OPS
from qonnx_bert.graph.roles import RoleMap, find_roles

# Roles whose per-channel ranges are recorded: the residual-stream roles (PEG's permutation
# and groups need them) and the GELU output (PEG's --intermediate-groups).
PER_CHANNEL_ROLES = ("layer.*.ffn.input", "layer.*.ffn.output", "layer.*.ffn.residual_sum", "layer.*.ffn.gelu")
# Ops whose output holds exactly the input's values, rearranged.


def resolve_recipe(recipe: Recipe | Mapping | str | Path | None, estimator: str | None, roles: RoleMap) -> Recipe:
    """The recipe to run: a file, parsed JSON or a ``Recipe``, checked against ``roles``;
    ``estimator`` replaces its default. No recipe: ``estimator`` for every tensor."""
    if recipe is None:
        return Recipe.single(estimator) if estimator else Recipe.single()
    if isinstance(recipe, (str, Path)):
        return load_recipe(recipe, roles=roles, default=estimator)
    if isinstance(recipe, Mapping):
        return parse_recipe(dict(recipe), roles=roles, default=estimator)
    if estimator:
        recipe = replace(recipe, default=Recipe.single(estimator).default)
    recipe.check(roles)
    return recipe


def shared_ranges(
    model: onnx.ModelProto, layouts: list[TensorLayout], specs: dict[str, EstimatorSpec]
) -> dict[str, str]:
    """tensor -> the tensor whose range it takes: it is a data-movement copy of it, with the same
    estimator and masking (so the estimate over its values would be the same)."""
    by_name = {lay.name: lay for lay in layouts}
    source: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in LAYOUT_OPS or not node.input or not node.output:
            continue
        src, out = source.get(node.input[0], node.input[0]), node.output[0]
        if (
            src in by_name
            and out in by_name
            and specs[src] == specs[out]
            and by_name[src].mask_path == by_name[out].mask_path
        ):
            source[out] = src
    return source


def check_groups(
    model: onnx.ModelProto,
    groups: Mapping[str, Sequence[Sequence[int]]],
    roles: RoleMap,
    layouts: dict[str, TensorLayout],
) -> dict[str, PerGroup]:
    """role -> its ``PerGroup`` granularity; UsageError for unknown roles or bad index sets."""
    shapes = tensor_shapes(model)
    out = {}
    for role, index_sets in groups.items():
        tensor = roles.tensor(role)
        if tensor not in layouts:
            raise UsageError(f"role {role} ({tensor}) is not a quantized activation; per-group ranges need one")
        try:
            out[role] = PerGroup(tuple(tuple(g) for g in index_sets))
        except (TypeError, ValueError) as err:
            raise UsageError(f"groups for {role}: {err}") from None
        width = shapes.get(tensor, (0, [None]))[1][-1]
        if isinstance(width, int) and width and max(max(g) for g in out[role].groups) >= width:
            raise UsageError(f"groups for {role}: index out of range for its {width} channels")
    return out


@dataclass(frozen=True)
class CalibrationPlan:
    """What to estimate: the estimator of each tensor, shared ranges, per-channel and per-group roles."""

    roles: RoleMap
    layouts: list[TensorLayout]
    recipe: Recipe
    specs: dict[str, EstimatorSpec]
    shared: dict[str, str]
    channel_roles: list[str]
    groups: dict[str, PerGroup]

    def targets(self) -> list[Target]:
        role_of, by_name = self.roles.role_of(), {lay.name: lay for lay in self.layouts}
        out = [
            Target(
                lay, partial(make_estimator, self.specs[lay.name], PerTensor()), label=role_of.get(lay.name, lay.name)
            )
            for lay in self.layouts
            if lay.name not in self.shared
        ]
        out += [
            Target(by_name[self.roles.tensor(r)], partial(make_estimator, "current_minmax", PerChannel()), True, r)
            for r in self.channel_roles
        ]
        out += [
            Target(
                by_name[self.roles.tensor(r)],
                partial(make_estimator, self.specs[self.roles.tensor(r)], g),
                True,
                r,
                key=group_key(r),
            )
            for r, g in self.groups.items()
        ]
        return out


def group_key(role: str) -> str:
    return f"{role}#groups"


def plan_calibration(
    model: onnx.ModelProto,
    *,
    estimator: str | None = None,
    recipe: Recipe | Mapping | str | Path | None = None,
    groups: Mapping[str, Sequence[Sequence[int]]] | None = None,
) -> CalibrationPlan:
    """Roles, quantized tensors and the estimator of each, for a prepared model; bad input raises UsageError."""
    roles = find_roles(model)
    layouts = quantizable_tensors(model)
    resolved = resolve_recipe(recipe, estimator, roles)
    specs = resolved.specs(roles, [lay.name for lay in layouts])
    by_name = {lay.name: lay for lay in layouts}
    return CalibrationPlan(
        roles,
        layouts,
        resolved,
        specs,
        shared_ranges(model, layouts, specs),
        [r for p in PER_CHANNEL_ROLES for r in roles.select(p)],
        check_groups(model, groups or {}, roles, by_name),
    )
