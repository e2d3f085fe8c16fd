"""Write low-bit weights into a QDQ model: packed INT4/INT2 (or int8) initializers feeding DequantizeLinear.

Hand-written rather than through ONNX Runtime's quantizer: its ``TensorQuantOverrides``
reach int4 per-channel MatMul weights only, and its ``MatMulNBitsQuantizer`` writes 4-bit
block-wise min-max MatMul weights only; neither writes int2 (opset 25), a 6-bit grid,
an int4/int2 embedding table feeding Gather, Gemm weights, or integers chosen elsewhere
(AdaRound). One writer for all of them keeps one layout: the scheme's DequantizeLinear of
each weight is replaced by one reading the new integers, everything else is untouched.
ONNX's version converter lifts the opset where the types need it (INT4: 21, INT2: 25).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

from qonnx_bert.calibration.weight_grid import QuantizedWeight
from qonnx_bert.graph.cleanup import drop_unused_initializers

WORD_IDS = "input_ids"
_OPSET = {4: 21, 2: 25}  # first opset whose DequantizeLinear takes INT4 / INT2


@dataclass(frozen=True, eq=False)
class WeightSite:
    """One weight a MatMul, Gemm or Gather reads: its float values and where its channels lie."""

    name: str  # the float weight's name in the scheme's float model
    consumer: str  # the node reading it
    tensor: str  # the tensor the consumer reads (a DequantizeLinear output, or the float initializer)
    values: np.ndarray
    channel_axis: int  # output channels (rows of an embedding table)
    embedding: bool  # the word embedding table
    quantized_input: bool  # the consumer's activation comes out of a DequantizeLinear (an A8/A16 scheme)


def weight_sites(quantized: onnx.ModelProto, floats: onnx.ModelProto) -> list[WeightSite]:
    """The MatMul/Gemm weights and the word embedding table of ``quantized``, with floats from ``floats``.

    ``floats`` is the float model the scheme quantized (its weight names are the stems of the
    QDQ initializers: ``<name>_quantized`` from ONNX Runtime, ``<name>_q<bits>`` from this writer);
    position and token-type tables are left as the scheme wrote them.
    """
    inits = {i.name for i in quantized.graph.initializer}
    values = {i.name: i for i in floats.graph.initializer}
    producers = {o: n for n in quantized.graph.node for o in n.output}
    sites = []
    for node in quantized.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            tensor, transposed = node.input[1], any(a.name == "transB" and a.i for a in node.attribute)
            axis, embedding = (0 if transposed else 1), False
        elif node.op_type == "Gather" and node.input[1] == WORD_IDS:
            tensor, axis, embedding = node.input[0], 0, True
        else:
            continue
        dq = producers.get(tensor)
        constant = tensor in inits or (dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits)
        name = tensor if tensor in inits else re.sub(r"_(quantized|q\d)$", "", dq.input[0]) if constant else ""
        if not constant:
            continue
        if name not in values:
            raise ValueError(f"weight {tensor} of {node.name}: no float {name!r} in the float model given")
        w = numpy_helper.to_array(values[name]).astype(np.float32)
        if w.ndim == 2:
            quantized_input = getattr(producers.get(node.input[0]), "op_type", "") == "DequantizeLinear"
            sites.append(WeightSite(name, node.name, tensor, w, axis, embedding, quantized_input and not embedding))
    return sites


def _dq_node(site: WeightSite, q: QuantizedWeight, output: str) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    stem = f"{site.name}_q{q.bits}"
    inits = [
        numpy_helper.from_array(q.stored(), stem),
        numpy_helper.from_array(q.scale.astype(np.float32), stem + "_scale"),
        numpy_helper.from_array(np.zeros(q.scale.shape, q.stored().dtype), stem + "_zero_point"),
    ]
    attrs = {} if q.axis is None else {"axis": q.axis}
    if q.block_size:
        attrs["block_size"] = q.block_size
    node = helper.make_node(
        "DequantizeLinear", [i.name for i in inits], [output], name=stem + "_DequantizeLinear", **attrs
    )
    return node, inits


def _lift_opset(model: onnx.ModelProto, bits: set[int]) -> onnx.ModelProto:
    needed = max((_OPSET.get(b, 0) for b in bits), default=0)
    current = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if needed <= current:
        return model
    lifted = version_converter.convert_version(model, needed)
    opsets = [helper.make_opsetid(o.domain, o.version) for o in lifted.opset_import]
    lifted.ir_version = max(lifted.ir_version, helper.find_min_ir_version_for(opsets))
    return lifted


def write_weights(quantized: onnx.ModelProto, weights: list[tuple[WeightSite, QuantizedWeight]]) -> onnx.ModelProto:
    """A copy of ``quantized`` whose sites read their new integers through one DequantizeLinear each."""
    out = onnx.ModelProto()
    out.CopyFrom(quantized)
    floats = {i.name for i in quantized.graph.initializer}
    pending = {s.tensor: (s, q) for s, q in weights}
    renamed = {t: t + "_lowbit" if t in floats else t for t in pending}  # a float weight gets a new DQ output
    nodes, inits = [], []
    for node in out.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0] in pending:
            continue  # the scheme's own DequantizeLinear of a rewritten weight
        for tensor in [t for t in node.input if t in pending]:
            dq, stored = _dq_node(*pending.pop(tensor), renamed[tensor])
            nodes.append(dq)  # just before its first reader: the graph stays topologically sorted
            inits += stored
        node.input[:] = [renamed.get(t, t) for t in node.input]
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    drop_unused_initializers(out)  # the scheme's int8 weights and the float weights replaced
    return _lift_opset(out, {q.bits for _, q in weights})
