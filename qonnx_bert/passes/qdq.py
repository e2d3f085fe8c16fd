"""Insert QuantizeLinear/DequantizeLinear pairs with ranges computed by qonnx.

Activations (and weights with them) go through ONNX Runtime's own QDQ quantizer,
``quantize_static``, fed with our ranges through its calibration-cache file, so
its op handlers, data-movement rules and bias handling apply unchanged. Two
things it cannot do are written here:

* weight-only quantization (``w8a32``): ORT's QDQ quantizer always quantizes
  the activations of the ops it touches, and its weight-only path
  (``MatMulNBitsQuantizer``) emits 4-bit block-wise custom ops, not per-tensor
  int8 QDQ;
* activation-only quantization (``w32a8``): ORT quantizes the weights of every
  op it quantizes; we put the float weights back afterwards.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from qonnx_bert.calibration.tensors import QUANTIZED_OP_TYPES
from qonnx_bert.passes.plan import Plan

logger = logging.getLogger(__name__)


class _DropPreprocessAdvice(logging.Filter):
    """ORT warns on the root logger that the model was not pre-processed; ours is prepared by qonnx."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()


def _ort_quantize(plan: Plan) -> onnx.ModelProto:
    quiet = _DropPreprocessAdvice()
    logging.getLogger().addFilter(quiet)
    try:
        return _run_quantize_static(plan)
    finally:
        logging.getLogger().removeFilter(quiet)


def _run_quantize_static(plan: Plan) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        TensorsData,
        save_tensors_data,
    )

    with tempfile.TemporaryDirectory(prefix="qonnx.") as tmp:
        src, dst, cache = (Path(tmp) / n for n in ("in.onnx", "out.onnx", "ranges.json"))
        onnx.save(plan.model, str(src))
        data = {t: (np.float32(lo), np.float32(hi)) for t, (lo, hi) in plan.ranges.items()}
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
        quantize_static(
            str(src),
            str(dst),
            calibration_data_reader=None,
            calibration_cache_path=str(cache),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=False,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
            nodes_to_exclude=list(plan.exclude_nodes),
            extra_options={
                "ActivationSymmetric": False,
                "WeightSymmetric": True,
                "TensorQuantOverrides": plan.overrides,
            },
        )
        return onnx.load(str(dst))


def _weights(model: onnx.ModelProto) -> set[str]:
    inits = {i.name for i in model.graph.initializer}
    names = set()
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            names.update(i for i in node.input[1:2] if i in inits)
        elif node.op_type == "Gather" and node.input[0] in inits:
            names.add(node.input[0])
    return names


def quantize_weights_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each MatMul/Gemm/Gather weight becomes DequantizeLinear(int8 weight, scale): symmetric, per-tensor."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    targets = _weights(out)
    kept, dq_nodes = [], []
    for init in out.graph.initializer:
        if init.name not in targets:
            kept.append(init)
            continue
        w = numpy_helper.to_array(init).astype(np.float32)
        scale = np.float32(max(np.abs(w).max(), 1e-12) / 127.0)
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        kept += [
            numpy_helper.from_array(q, init.name + "_quantized"),
            numpy_helper.from_array(scale, init.name + "_scale"),
        ]
        dq_nodes.append(
            onnx.helper.make_node(
                "DequantizeLinear",
                [init.name + "_quantized", init.name + "_scale"],
                [init.name],
                name=init.name + "_DequantizeLinear",
            )
        )
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    nodes = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(dq_nodes + nodes)
    return out


def restore_float_weights(quantized: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the DequantizeLinear of every constant weight and put the original float tensor back."""
    floats = {i.name: i for i in original.graph.initializer}
    inits = {i.name for i in quantized.graph.initializer}
    renamed: dict[str, str] = {}  # DequantizeLinear output -> original weight name
    for node in quantized.graph.node:
        stem = node.input[0].removesuffix("_quantized") if node.input else ""
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and stem in floats:
            renamed[node.output[0]] = stem
    nodes = [n for n in quantized.graph.node if not (n.output and n.output[0] in renamed)]
    for node in nodes:
        node.input[:] = [renamed.get(i, i) for i in node.input]
    del quantized.graph.node[:]
    quantized.graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    kept = [i for i in quantized.graph.initializer if i.name in used]
    have = {i.name for i in kept}
    del quantized.graph.initializer[:]
    quantized.graph.initializer.extend(kept + [floats[n] for n in sorted(set(renamed.values()) - have)])
    return quantized


def remove_qdq(model: onnx.ModelProto, tensors: list[str]) -> None:
    """Take ``tensors``' QuantizeLinear -> DequantizeLinear pairs out again, in place: readers get the float tensor.

    ORT's QDQ quantizer quantizes every MatMul output and can leave outputs float only
    per op type, not per node; a MatMul whose output must stay float is fixed up here.
    """
    wanted = set(tensors)
    quantizers = {n.output[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in wanted}
    dequantizers = {
        n.output[0]: quantizers[n.input[0]].input[0]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in quantizers
    }
    nodes = [n for n in model.graph.node if n.output[0] not in quantizers and n.output[0] not in dequantizers]
    for node in nodes:
        node.input[:] = [dequantizers.get(i, i) for i in node.input]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def insert_qdq(plan: Plan) -> onnx.ModelProto:
    """The QDQ model of a plan: activations from ``plan.ranges`` (None: weights only)."""
    if plan.ranges is None:
        return quantize_weights_only(plan.model)
    from dataclasses import replace

    from qonnx_bert.passes.htp_rules import htp_ready, quantize_where_constants
    from qonnx_bert.passes.mixed_precision import widen_exactly

    model, htp = htp_ready(
        plan.model, plan.overrides, plan.ranges
    )  # measured HTP rules; the scheme's own overrides win
    plan = replace(plan, model=model, overrides={**htp, **plan.overrides})
    quantized = _ort_quantize(plan)
    quantize_where_constants(quantized)
    remove_qdq(quantized, plan.float_tensors)
    widen_exactly(quantized, plan.uint16_readers)
    return quantized if plan.weights else restore_float_weights(quantized, plan.model)
