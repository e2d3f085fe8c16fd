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
import onnx_ir as ir
from onnx import numpy_helper

from qonnx_bert.calibration.tensors import QUANTIZED_OP_TYPES
from qonnx_bert.core.memory import release_freed_memory
from qonnx_bert.graph.qdq import QdqView, is_qdq
from qonnx_bert.graph.weightless import is_stub, with_weights
from qonnx_bert.passes.cpu_fusion import fuse_for_cpu
from qonnx_bert.passes.htp_rules import htp_edits, quantize_where_constants
from qonnx_bert.passes.mixed_precision import widen_exactly
from qonnx_bert.passes.plan import Plan

logger = logging.getLogger(__name__)


class _DropPreprocessAdvice(logging.Filter):
    """ORT warns on the root logger that the model was not pre-processed; ours is prepared by qonnx."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()


def _ort_quantize(plan: Plan, src: Path) -> onnx.ModelProto:
    quiet = _DropPreprocessAdvice()
    logging.getLogger().addFilter(quiet)
    try:
        return _run_quantize_static(plan, src)
    finally:
        logging.getLogger().removeFilter(quiet)


def _save_filled(light: onnx.ModelProto, floats: onnx.ModelProto, copies: dict[str, str], path: Path) -> None:
    """``light`` with each stub filled from ``floats`` (or from the constant ``copies`` says it copies), written
    with its weights in external data: ORT's tool then reads them tensor by tensor instead of holding the
    file's bytes and their parsed copy at once. Written from ``floats``' own tensors: no model copy is made."""
    model = ir.from_proto(light)
    originals = {i.name: i for i in floats.graph.initializer}
    for name in (i.name for i in light.graph.initializer if is_stub(i)):
        value = model.graph.initializers[name]
        source = originals[copies.get(name, name)]
        # a copy gets its own array: onnx_ir names a serialized tensor after its value, in the tensor itself
        value.const_value = (
            ir.serde.TensorProtoTensor(source)
            if source.name == value.name
            else ir.tensor(numpy_helper.to_array(source))
        )
    ir.save(model, str(path), external_data=path.name + ".data")


def _run_quantize_static(plan: Plan, src: Path) -> onnx.ModelProto:
    """ORT's QDQ quantizer on the FP32 model written to ``src`` (``plan.model``: its graph, weightless)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data

    with tempfile.TemporaryDirectory(prefix="qonnx.") as tmp:
        dst, cache = Path(tmp) / "out.onnx", Path(tmp) / "ranges.json"
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
            per_channel=plan.per_channel,
            reduce_range=plan.reduce_range,
            op_types_to_quantize=list(plan.op_types or QUANTIZED_OP_TYPES),
            nodes_to_exclude=list(plan.exclude_nodes),
            use_external_data_format=True,
            extra_options={
                "ActivationSymmetric": False,
                "WeightSymmetric": True,
                "TensorQuantOverrides": plan.overrides,
                "OpTypesToExcludeOutputQuantization": list(plan.float_outputs),
                "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},  # a [K, N] weight: one scale per output column
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


def _rounded_activations(model: onnx.ModelProto) -> dict[str, str]:
    """DequantizeLinear output -> the float activation its QuantizeLinear read (Gather outputs left out)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out = {}
    for node in model.graph.node:
        q = producer.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            origin = producer.get(q.input[0])
            if origin is None or origin.op_type != "Gather":
                out[node.output[0]] = q.input[0]
    return out


def _other_readers(model: onnx.ModelProto, integer_readers: tuple[str, ...]) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type not in integer_readers and not is_qdq(n)]


def float_readers(model: onnx.ModelProto, integer_readers: tuple[str, ...]) -> None:
    """Readers of a rounded activation that are not ``integer_readers`` read the float tensor again, in place.

    ORT's quantizer gives a tensor one Q/DQ pair shared by all its readers, so on the CPU
    target the residual Add would read the LayerNorm output rounded to 8 bits for the MatMul
    beside it. An output of a Gather (a lookup in an int8 table) stays as it is: it is exact
    on its grid, and the CPU provider gathers the table's int8 rows only while the Q/DQ remain.
    An empty ``integer_readers`` changes nothing.
    """
    if not integer_readers:
        return
    rounded = _rounded_activations(model)
    for node in _other_readers(model, integer_readers):
        node.input[:] = [rounded.get(i, i) for i in node.input]
    drop_unread(model)


def drop_unread(model: onnx.ModelProto) -> None:
    """Remove Q/DQ nodes nobody reads (repeatedly: a Q whose only DQ went goes too)."""
    outputs = {o.name for o in model.graph.output}
    while True:
        read = {i for n in model.graph.node for i in n.input} | outputs
        kept = [n for n in model.graph.node if not (is_qdq(n) and n.output[0] not in read)]
        if len(kept) == len(model.graph.node):
            return
        del model.graph.node[:]
        model.graph.node.extend(kept)


def _integer_readers_only(model: onnx.ModelProto, plan: Plan) -> str | None:
    if not plan.integer_readers:
        return None
    rounded = _rounded_activations(model)
    bad = [n.name for n in _other_readers(model, plan.integer_readers) if any(i in rounded for i in n.input)]
    return f"nodes without an integer kernel still read a rounded activation: {bad[:3]}" if bad else None


def _fused_for_cpu(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """``fuse_for_cpu``; a float kernel it fused over a rounded activation then reads the float one again."""
    if not plan.fuse_cpu:
        return model
    fused = fuse_for_cpu(model)
    float_readers(fused, plan.integer_readers)
    return fused


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


def _readers_read_uint8(model: onnx.ModelProto, plan: Plan) -> str | None:
    view = QdqView(model)
    bad = [r for r in plan.uint16_readers if r not in view.nodes or view.input_type(view.nodes[r].input[0]) != "uint8"]
    return f"uint16 readers not fed by a uint8 DequantizeLinear: {bad[:3]}" if bad else None


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
        "readers without an integer kernel read float",
        _in_place(float_readers, "integer_readers"),
        _quantized_by_ort,
        _integer_readers_only,
    ),
    Step("fuse into the CPU provider's transformer kernels", _fused_for_cpu, _quantized_by_ort, _integer_readers_only),
    Step(
        "feed uint16 readers an exact uint16 copy",
        _in_place(widen_exactly, "uint16_readers"),
        _readers_read_uint8,
        _narrow_readers,
    ),
)


def insert_qdq(plan: Plan) -> onnx.ModelProto:
    """The QDQ model of a plan: activations from ``plan.ranges`` (None: weights only).

    The float model is let go once written for ONNX Runtime's quantizer: a caller that hands ``plan``
    over (keeps no reference to it or its model) does not hold it twice while ORT quantizes.
    """
    if plan.ranges is None:
        return quantize_weights_only(plan.model)
    light, copies, htp = htp_edits(plan.model, plan.overrides, plan.ranges)  # measured HTP rules; the scheme's own win
    floats = None if plan.weights else plan.model  # activations-only: its float weights go back afterwards
    with tempfile.TemporaryDirectory(prefix="qonnx.") as tmp:
        src = Path(tmp) / "in.onnx"
        _save_filled(light, plan.model, copies, src)
        plan = replace(plan, model=light, overrides={**htp, **plan.overrides})
        release_freed_memory()
        quantized = _ort_quantize(plan, src)
    for step in QDQ_PIPELINE:
        missing = step.requires(quantized, plan)
        if missing:
            raise RuntimeError(f"qonnx bug: QDQ pass {step.name!r} got a graph it cannot work on: {missing}")
        quantized = step.run(quantized, plan)
        broken = step.ensures(quantized, plan)
        if broken:
            raise RuntimeError(f"qonnx bug: QDQ pass {step.name!r} did not hold: {broken}")
    return quantized if floats is None else restore_float_weights(quantized, with_weights(light, floats, copies))
