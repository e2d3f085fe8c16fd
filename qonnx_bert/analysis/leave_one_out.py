"""The paper's leave-one-out analysis (Table 2): W32A8 with some roles left in float.

Every activation is quantized exactly as in ``w32a8`` (uint8, asymmetric,
per-tensor; weights float) except the tensors of the roles chosen by
``keep_float`` patterns such as ``layer.*.ffn.residual_sum`` or ``layer.10-11.ffn.*``.

This is a pass over the finished ``w32a8`` QDQ model, not a ``Plan``: ONNX
Runtime's quantizer puts one Q/DQ pair on a tensor and rewires *every* reader to
the dequantized value, excluded nodes included, and requires a range for every
input and output of a node it quantizes. Excluding the nodes around a tensor
therefore also drops quantizers the analysis must keep (a Transpose or Reshape
only re-quantizes an input that is already quantized, so excluding the context
MatMul leaves the whole context path in float). Removing the chosen tensors'
Q/DQ pairs afterwards changes nothing else, so a row of Table 2 differs from the
``w32a8`` row by exactly the quantizers it names.

A data-movement op (Reshape, Transpose, Gather ...) after a kept tensor carries
the same values on and ORT quantizes its output on the kept tensor's grid; those
outputs are kept float too, or the values would be quantized one hop later.
"""

from __future__ import annotations

import onnx

from qonnx_bert.calibration.ranges import RangeTable
from qonnx_bert.core.errors import UsageError
from qonnx_bert.graph.cleanup import drop_unused_initializers
from qonnx_bert.graph.ops import DATA_MOVEMENT_OPS
from qonnx_bert.graph.prepare import prepare
from qonnx_bert.graph.qdq import GRAPH_OUTPUT_SUFFIX, quantizer_of
from qonnx_bert.graph.roles import RoleMap, find_roles
from qonnx_bert.quantize.api import QuantReport, quant_report, quantize
from qonnx_bert.quantize.config import W32A8Config


def family_pattern(family: str) -> str:
    """``ffn.residual_sum`` -> ``layer.*.ffn.residual_sum``; ``output`` and ``embeddings.*`` stay as given."""
    return f"layer.*.{family}" if family.split(".")[0] in ("attention", "ffn") else family


def kept_tensors(roles: RoleMap, patterns: list[str] | tuple[str, ...]) -> list[str]:
    """Tensors of the roles matching ``patterns`` (graph order); a pattern matching nothing is an error."""
    if not patterns:
        raise UsageError(
            "leave-one-out needs keep_float: role patterns to leave in float, e.g. 'layer.*.ffn.residual_sum'"
        )
    for pattern in patterns:
        if not roles.select(pattern):
            raise UsageError(f"keep_float {pattern!r} matches no role of this model")
    matched = {r for p in patterns for r in roles.select(p)}
    return list(dict.fromkeys(t for r, t in roles.roles.items() if r in matched))


def _remove_pair(model: onnx.ModelProto, quant: onnx.NodeProto) -> str:
    """Drop one Q and its DQ readers; their readers read the float tensor. Returns the float tensor's name."""
    nodes = list(model.graph.node)
    dqs = [n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] == quant.output[0]]
    source = quant.input[0]
    outputs = {o.name for o in model.graph.output}
    if source.endswith(GRAPH_OUTPUT_SUFFIX) and any(d.output[0] in outputs for d in dqs):
        target = next(d.output[0] for d in dqs if d.output[0] in outputs)  # the graph output keeps its name
        for node in nodes:
            node.output[:] = [target if o == source else o for o in node.output]
            node.input[:] = [target if i == source else i for i in node.input]
        source = target
    renamed = {d.output[0]: source for d in dqs}
    dropped = {id(quant), *map(id, dqs)}
    kept = [n for n in nodes if id(n) not in dropped]
    if any(n.op_type == "QuantizeLinear" and n.input[0] in renamed for n in kept):
        raise UsageError(
            f"tensor {source!r} is requantized (a 8/16-bit convert): leave-one-out applies to plain w32a8 models"
        )
    for node in kept:
        node.input[:] = [renamed.get(i, i) for i in node.input]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return source


def keep_float(qdq: onnx.ModelProto, tensors: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``qdq`` without the quantizers of ``tensors`` and of the data-movement outputs they feed.

    Returns the model and the float tensors whose quantizer was removed.
    """
    out = onnx.ModelProto()
    out.CopyFrom(qdq)
    todo, done = list(tensors), []
    while todo:
        tensor = todo.pop(0)
        quant = quantizer_of(out, tensor)
        if quant is None or tensor in done:
            continue
        done.append(_remove_pair(out, quant))
        todo += [
            n.output[0] for n in out.graph.node if n.op_type in DATA_MOVEMENT_OPS and n.input and n.input[0] == done[-1]
        ]
    drop_unused_initializers(out)
    return out, done


def quantize_leave_one_out(
    model: onnx.ModelProto, ranges: RangeTable, patterns: list[str] | tuple[str, ...]
) -> tuple[onnx.ModelProto, QuantReport]:
    """``w32a8`` with the roles matching ``patterns`` left in float (the paper's Table 2 rows)."""
    tensors = kept_tensors(find_roles(prepare(model)), list(patterns))
    base, base_report = quantize(model, W32A8Config(), ranges)
    quantized, floats = keep_float(base, tensors)
    note = f"leave-one-out: {', '.join(patterns)} in float ({len(floats)} quantizers removed from w32a8)"
    return quantized, quant_report(quantized, "w32a8", [*base_report.notes, note])
