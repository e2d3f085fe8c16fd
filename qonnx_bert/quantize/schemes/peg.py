"""Per-embedding-group (PEG) quantization of the FFN, lowered to per-tensor QDQ.

The paper's fix (Section 4): the FFN input, output and residual sum of each
layer are quantized per group of embedding dimensions, everything else stays
per-tensor W8A8. Groups come from the per-dimension calibration ranges
(``peg_groups``); the permutation that makes groups contiguous is either one per
layer (Gathers around each FFN, the paper) or one for the whole model folded into
the weights (``passes.permute_stream``, ``peg``'s default: no Gather at run time);
``passes.peg_split_ffn`` splits each FFN into group tensors;
tensors that the split creates are calibrated by replaying the calibration
sequences stored in the ranges file through the rewritten FP32 graph, with the
same estimator.

Precision of the tensors that hold every group at once (the FFN input before
the Split, the residual sum after the Concat) depends on ``--target``:

* ``portable`` (default; what QNN HTP needs): uint16. Each group is quantized to
  uint8 with its own range; putting all groups on one 8-bit grid first (the
  LayerNorm output before the Split) or after (the Concat feeding the second
  LayerNorm) would undo PEG, and integer runtimes need the LayerNorms' inputs
  and outputs quantized, so 16 bits is the narrowest grid that keeps every
  group's resolution; the LayerNorms run in 16 bits and are converted to and
  from uint8 by the same legal DQ->Q converts as ``--int16``. Each group of the
  Concat keeps its own scale, converted up to uint16 so the Concat node is
  type-homogeneous, which QNN HTP requires.
* ``cpu``: float. The CPU provider runs LayerNorm, Split and Concat in float
  anyway, so these tensors are left unquantized: the groups go straight from
  their own uint8 grids into the LayerNorms, with no 16-bit detour (fewer Q/DQ
  nodes and a faster graph on the CPU provider: ``bench/results/``). Not for QNN HTP.

Split gets one Q/DQ per group output (ORT's Split handler would force its
input's scale on every output, so Split is excluded from ORT's quantizer).

The split dense layers' partial products (K of the first, J per group of the
second) and their running sums are not rounded to 8 bits: the original graph has
one accumulator there, and ORT's quantizer would round every MatMul and Add output.
``cpu`` keeps them float (each MatMul runs as MatMulIntegerToFloat); ``portable``
keeps them uint16, with each MatMul reading its group's uint8 values through an
exact uint16 copy (an a16w8 MatMul, native on HTP). Checked against the
per-channel reference (``analysis/peg_reference.py``; numbers in ``bench/results/``).

Beyond the paper, ``--intermediate-groups J`` (``peg``'s default 2) also splits
the GELU output into outlier-aware groups of units (``peg_groups.intermediate_groups``)
where one group would be 8x noisier: a unit whose GELU output range is several times
the other units' (on MiniLM-L6, the unit whose W2 weight writes the residual stream's
outlier dimension). The whole GELU output before its Split is treated like the FFN
input: uint16 (portable) or float (cpu). GLUE effect: ``bench/results/glue-minilm-l6/``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from qonnx_bert.calibration.segments import SplitModel
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.memory import release_freed_memory
from qonnx_bert.core.modelinfo import PERMUTED_KEY, TARGET_KEY, permuted_record
from qonnx_bert.passes.mixed_precision import int16_overrides
from qonnx_bert.passes.peg_split_ffn import split_ffn
from qonnx_bert.passes.permute_stream import permute_stream
from qonnx_bert.passes.plan import Plan, activation_ranges, cpu_plan
from qonnx_bert.quantize.config import ConfigError, PegConfig, PegEqualConfig, Permutation, Target
from qonnx_bert.quantize.schemes.context import SchemeContext
from qonnx_bert.quantize.schemes.peg_groups import intermediate_groups, layer_groups, model_order, quantization_noise
from qonnx_bert.quantize.schemes.replay import calibrate_new_tensors

PEG_ROLES = ("input", "output", "residual_sum")


def dimension_ranges(per_channel: dict, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension (min, max) of a layer: the widest over FFN input, output and residual sum."""
    keys = [f"layer.{layer}.ffn.{r}" for r in PEG_ROLES]
    missing = [k for k in keys if k not in per_channel]
    if missing:
        raise UsageError(
            f"ranges file has no per-embedding statistics for {missing[0]}; re-run `qonnx calibrate` with this qonnx "
            "version"
        )
    lo = np.min([per_channel[k]["min"] for k in keys], axis=0)
    hi = np.max([per_channel[k]["max"] for k in keys], axis=0)
    return lo, hi


def gelu_ranges(per_channel: dict, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit (min, max) of a layer's GELU output, 0 included (as the quantizer's range is)."""
    key = f"layer.{layer}.ffn.gelu"
    if key not in per_channel:
        raise UsageError(
            f"ranges file has no per-unit statistics for {key} (needed by GELU groups); "
            "re-run `qonnx calibrate` with this qonnx version"
        )
    return np.minimum(per_channel[key]["min"], 0.0), np.maximum(per_channel[key]["max"], 0.0)


def _selected_layers(opts: PegConfig, num_layers: int) -> list[int]:
    layers = list(opts.layers) if opts.layers is not None else list(range(num_layers))
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ConfigError([("layers", f"has {bad[0]}: out of range, this model has layers 0-{num_layers - 1}")])
    return layers


@dataclass(frozen=True)
class PegGroups:
    """Where PEG cuts each layer: groups of hidden dimensions and of GELU units, in FP32 indices.

    ``order`` is the model-wide order of the hidden dimensions folded into the weights
    (``--permutation model``); each layer's groups are then contiguous segments of it.
    ``units[layer]`` is None where the layer's GELU output stays one tensor.
    """

    order: np.ndarray | None
    stats: dict[int, tuple[np.ndarray, np.ndarray]]  # per-dimension (min, max) of each PEG layer
    hidden: dict[int, list[np.ndarray]]
    units: dict[int, list[np.ndarray] | None]


def choose_groups(per_channel: dict, opts: PegConfig, num_layers: int) -> PegGroups:
    """The groups of every selected layer from the per-channel calibration statistics."""
    stats = {layer: dimension_ranges(per_channel, layer) for layer in _selected_layers(opts, num_layers)}
    order = model_order([hi - lo for lo, hi in stats.values()]) if opts.permutation == Permutation.MODEL else None
    hidden = {
        layer: layer_groups(lo, hi, opts.groups, opts.grouping, _permuted(opts), order)
        for layer, (lo, hi) in stats.items()
    }
    units = {
        layer: intermediate_groups(*gelu_ranges(per_channel, layer), opts.intermediate_groups)
        if opts.intermediate_groups != 1
        else None
        for layer in stats
    }
    return PegGroups(order, stats, hidden, units)


def _permuted(opts: PegConfig) -> bool:
    return opts.permutation != Permutation.NONE


@dataclass(frozen=True)
class PegScheme:
    config: type[PegConfig]

    def plan(self, ctx: SchemeContext) -> Plan:
        opts = ctx.config
        base = ctx.calibrated()
        chosen = choose_groups(ctx.require_ranges().per_channel, opts, ctx.roles.num_layers)
        model = ir.from_proto(ctx.take_prepared())  # freed once the rewrite no longer shares its tensors
        fallback = []
        try:
            permuted = _fold_order(model, ctx, chosen.order)
        except UsageError as err:  # e.g. ELECTRA's embedding projection; the fold left the graph as it was
            opts = replace(opts, permutation=Permutation.LAYER)
            chosen, permuted = choose_groups(ctx.require_ranges().per_channel, opts, ctx.roles.num_layers), {}
            fallback = [f"chose permutation layer: the model-wide order does not fold here ({err})"]
        position = None if chosen.order is None else np.argsort(chosen.order)  # graph dimension of each model dimension
        results = []
        for layer, groups in chosen.hidden.items():
            in_graph = groups if position is None else [np.sort(position[g]) for g in groups]
            results.append(split_ffn(model.graph, ctx.roles.roles, layer, in_graph, chosen.units[layer]))
            permuted |= results[-1].permuted
        RemoveUnusedNodesPass()(model)
        split = SplitModel.from_ir(model)  # the permuted weights stay the arrays the passes made: no copy
        del model
        release_freed_memory()  # an IR graph is a reference cycle: freed only by the collector
        entries = {**base, **calibrate_new_tensors(ctx, split, set(base))}
        release_freed_memory()  # the replay's activations
        rewritten = split.into_proto()  # after the replay: its activations and the protobuf copy never meet
        del split
        metadata = ({TARGET_KEY: "cpu"} if opts.target == Target.CPU else {}) | (
            {PERMUTED_KEY: permuted_record(permuted)} if permuted else {}
        )
        plan = Plan(
            rewritten,
            activation_ranges(entries),
            weights=True,
            notes=fallback + _notes(opts, chosen),
            metadata=metadata,
            **_precision(opts.target, rewritten, results),
        )
        return cpu_plan(plan) if opts.target == Target.CPU else plan


def _fold_order(model: ir.Model, ctx: SchemeContext, order: np.ndarray | None) -> dict[str, np.ndarray]:
    """Fold the model-wide order (if any) into the weights; the tensors it leaves permuted."""
    if order is None:
        return {}
    values = {v.name: v for node in model.graph for v in node.outputs}
    return dict.fromkeys(permute_stream(model.graph, values[ctx.roles.tensor("embeddings.layernorm")], order), order)


def _precision(target: str, model: onnx.ModelProto, results: list) -> dict:
    """The plan fields that hold the lowering's own tensors, per ``--target`` (see the module docstring).

    Both targets keep the Splits out of ORT's quantizer (one Q/DQ per group). ``cpu``: the
    tensors holding every group and the partial products stay float. ``portable``: they are
    uint16, and each partial-product MatMul reads its group's uint8 values through an exact
    uint16 copy (``uint16_readers``), so the group is still rounded to 8 bits.
    """
    whole = [t for r in results for t in r.whole]
    partials = [t for r in results for t in r.partials]
    exclude = [n for r in results for n in r.group_nodes]
    if target == Target.CPU:  # cpu_plan leaves every tensor float but the MatMul inputs
        return {"exclude_nodes": exclude}
    readers = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.output[0] in set(partials)]
    overrides = int16_overrides(model, whole + partials, readers=readers) if whole else {}
    return {"exclude_nodes": exclude, "overrides": overrides, "uint16_readers": readers}


def _notes(opts: PegConfig, chosen: PegGroups) -> list[str]:
    """The report lines: each layer's groups, the lowering, the paper's extra-parameter count."""
    notes = [
        _group_note(layer, groups, *chosen.stats[layer])
        + (
            f"; GELU output units in groups [{','.join(str(len(u)) for u in units)}]"
            if (units := chosen.units[layer])
            else ""
        )
        for layer, groups in chosen.hidden.items()
    ]
    how = (
        "not permuted"
        if not _permuted(opts)
        else (
            "one model-wide permutation folded into the weights" if chosen.order is not None else "permuted per layer"
        )
    )
    precision = "uint16" if opts.target == Target.PORTABLE else "float (--target cpu)"
    notes.append(
        f"PEG K={opts.groups} ({opts.grouping} groups, {how}); FFN inputs before the split and residual sums after "
        f"the concat in {precision}"
    )
    split_units = sum(u is not None for u in chosen.units.values())
    notes.append(
        _extra_parameters(
            opts,
            per_layer_order=_permuted(opts) and chosen.order is None,
            hidden=len(next(iter(chosen.stats.values()))[0]),
        )
        + (
            f"; GELU groups add 2*J = {2 * opts.intermediate_groups} ranges in each of the {split_units} layers they "
            "split"
            " (their unit permutation is folded into the weights)"
            if split_units
            else ""
        )
    )
    return notes


def _extra_parameters(opts: PegConfig, per_layer_order: bool, hidden: int) -> str:
    """The paper's count of PEG's extra parameters per layer: d permutation indices + 2 * 3 * K ranges."""
    indices = hidden if per_layer_order else 0
    ranges = 2 * len(PEG_ROLES) * opts.groups
    where = (
        ""
        if per_layer_order
        else " (no permutation indices: " + ("folded into the weights)" if _permuted(opts) else "not permuted)")
    )
    return f"extra parameters per PEG layer (the paper's d + 2*3*K): {indices} + {ranges} = {indices + ranges}{where}"


def _group_note(layer: int, groups: list[np.ndarray], lo: np.ndarray, hi: np.ndarray) -> str:
    sizes = ",".join(str(len(g)) for g in groups)
    widest = max(groups, key=lambda g: hi[g].max() - lo[g].min())
    widest_range = hi[widest].max() - lo[widest].min()
    noise = quantization_noise(lo, hi, groups)
    return f"layer {layer}: group sizes [{sizes}], widest group range {widest_range:.1f}, noise objective {noise:.3g}"


PEG_SCHEMES = (PegScheme(PegConfig), PegScheme(PegEqualConfig))
