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
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from qonnx_bert.calibration.tensors import QUANTIZED_OP_TYPES
from qonnx_bert.core.files import too_large
from qonnx_bert.graph.qdq import QdqView, quantizer_of
from qonnx_bert.passes.htp_rules import htp_ready, quantize_where_constants
from qonnx_bert.passes.mixed_precision import widen_exactly
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
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data

    with tempfile.TemporaryDirectory(prefix="qonnx.") as tmp:
        src, dst, cache = (Path(tmp) / n for n in ("in.onnx", "out.onnx", "ranges.json"))
        large = too_large(plan.model)  # an FP32 model over 2 GB goes to ORT's tool with external data
        onnx.save(plan.model, str(src), save_as_external_data=large)
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
            use_external_data_format=large,
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


@dataclass(frozen=True)
class Step:
    """One pass of the QDQ pipeline, what it needs from the graph it gets, and what it guarantees.

    ``requires`` and ``ensures`` return None when the condition holds, else what is wrong;
    both are checked on every run (cheap graph walks), so a pass that is handed a graph it
    cannot work on, or that silently does less, fails loudly.
    """

    name: str
    run: Callable[[onnx.ModelProto, Plan], onnx.ModelProto]
    requires: Callable[[onnx.ModelProto, Plan], str | None]
    ensures: Callable[[onnx.ModelProto, Plan], str | None]


def _quantized_by_ort(model: onnx.ModelProto, plan: Plan) -> str | None:
    return None if any(n.op_type == "QuantizeLinear" for n in model.graph.node) else "no QuantizeLinear in the graph"


def _float_tensors_present(model: onnx.ModelProto, plan: Plan) -> str | None:
    produced = {o for n in model.graph.node for o in n.output}
    lost = [t for t in plan.float_tensors if t not in produced]
    return f"float tensors not in the graph (renamed by the quantizer?): {lost[:3]}" if lost else None


def _readers_read_uint8(model: onnx.ModelProto, plan: Plan) -> str | None:
    view = QdqView(model)
    bad = [r for r in plan.uint16_readers if r not in view.nodes or view.input_type(view.nodes[r].input[0]) != "uint8"]
    return f"uint16 readers not fed by a uint8 DequantizeLinear: {bad[:3]}" if bad else None


def _still_quantized(model: onnx.ModelProto, plan: Plan) -> str | None:
    kept = [t for t in plan.float_tensors if quantizer_of(model, t) is not None]
    return f"float tensors still quantized: {kept[:3]}" if kept else None


def _float_where_branches(model: onnx.ModelProto, plan: Plan) -> str | None:
    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    bad = [
        n.name
        for n in model.graph.node
        if n.op_type == "Where" and n.output[0] in quantized and any(i in floats for i in n.input[1:])
    ]
    return f"quantized Where nodes with float constant branches: {bad[:3]}" if bad else None


def _narrow_readers(model: onnx.ModelProto, plan: Plan) -> str | None:
    view = QdqView(model)
    bad = [r for r in plan.uint16_readers if view.input_type(view.nodes[r].input[0]) != "uint16"]
    return f"uint16 readers not fed uint16: {bad[:3]}" if bad else None


def _in_place(fix: Callable[..., object], field: str) -> Callable[[onnx.ModelProto, Plan], onnx.ModelProto]:
    """A pass that edits the model in place, given the plan field it acts on."""

    def run(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
        if field:
            fix(model, getattr(plan, field))
        else:
            fix(model)
        return model

    return run


# After ONNX Runtime's quantizer (``_ort_quantize``), in this order.
QDQ_PIPELINE = (
    Step(
        "quantize Where constants on their output's grid",
        _in_place(quantize_where_constants, ""),
        _quantized_by_ort,
        _float_where_branches,
    ),
    Step(
        "keep the plan's float tensors float",
        _in_place(remove_qdq, "float_tensors"),
        _float_tensors_present,
        _still_quantized,
    ),
    Step(
        "feed uint16 readers an exact uint16 copy",
        _in_place(widen_exactly, "uint16_readers"),
        _readers_read_uint8,
        _narrow_readers,
    ),
)


def insert_qdq(plan: Plan) -> onnx.ModelProto:
    """The QDQ model of a plan: activations from ``plan.ranges`` (None: weights only)."""
    if plan.ranges is None:
        return quantize_weights_only(plan.model)
    model, htp = htp_ready(plan.model, plan.overrides, plan.ranges)  # measured HTP rules; the scheme's own win
    plan = replace(plan, model=model, overrides={**htp, **plan.overrides})
    quantized = _ort_quantize(plan)
    for step in QDQ_PIPELINE:
        missing = step.requires(quantized, plan)
        if missing:
            raise RuntimeError(f"qonnx bug: QDQ pass {step.name!r} got a graph it cannot work on: {missing}")
        quantized = step.run(quantized, plan)
        broken = step.ensures(quantized, plan)
        if broken:
            raise RuntimeError(f"qonnx bug: QDQ pass {step.name!r} did not hold: {broken}")
    return quantized if plan.weights else restore_float_weights(quantized, plan.model)
