"""The quantize step: FP32 model + ranges + scheme -> QDQ model and a report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import onnx

from qonnx_bert.calibration.ranges import RangeTable
from qonnx_bert.calibration.tensors import quantizable_tensors
from qonnx_bert.errors import UsageError
from qonnx_bert.modelinfo import check_encoder_inputs
from qonnx_bert.passes.prepare import prepare
from qonnx_bert.passes.qdq import insert_qdq
from qonnx_bert.roles import find_roles
from qonnx_bert.schemes import activation_ranges, get_scheme

_BITS = {onnx.TensorProto.UINT8: 8, onnx.TensorProto.INT8: 8, onnx.TensorProto.UINT16: 16, onnx.TensorProto.INT16: 16}


@dataclass(frozen=True)
class QuantReport:
    """What was quantized: counts of activation quantizers by bit-width, and weights."""

    scheme: str
    activation_bits: dict[int, int]
    quantized_weights: int

    def lines(self) -> list[str]:
        total = sum(self.activation_bits.values())
        by_bits = ", ".join(f"{n} at {b}-bit" for b, n in sorted(self.activation_bits.items())) or "none"
        return [
            f"scheme {self.scheme}: {total} activation quantizers ({by_bits}); {self.quantized_weights} weight tensors quantized",
        ]


def report(model: onnx.ModelProto, scheme: str) -> QuantReport:
    """Count activation QuantizeLinear nodes per bit-width and weight DequantizeLinear nodes."""
    inits = {i.name: i for i in model.graph.initializer}
    bits: Counter[int] = Counter()
    weights = 0
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            zp = inits.get(node.input[2]) if len(node.input) > 2 else None
            bits[_BITS.get(zp.data_type, 8) if zp is not None else 8] += 1
        elif node.op_type == "DequantizeLinear" and node.input[0] in inits:
            weights += 1
    return QuantReport(scheme, dict(bits), weights)


def quantize(model: onnx.ModelProto, scheme_name: str, ranges: RangeTable | None, *, path: str = "model") -> tuple[onnx.ModelProto, QuantReport]:
    """Apply a scheme to an FP32 model exported by ``qonnx export``."""
    scheme = get_scheme(scheme_name)
    check_encoder_inputs(model, path)
    prepared = prepare(model)
    find_roles(prepared)  # fail early, with the layer named, on a graph we cannot map
    act_ranges = None
    if scheme.activations:
        if ranges is None:
            raise UsageError(f"scheme {scheme.name} quantizes activations: pass --ranges FILE from `qonnx calibrate`")
        needed = [t.name for t in quantizable_tensors(prepared)]
        ranges.check_fits(model, needed)
        act_ranges = activation_ranges({t: ranges.tensors[t] for t in needed})
    quantized = insert_qdq(prepared, act_ranges, weights=scheme.weights)
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(model.metadata_props)
    return quantized, report(quantized, scheme.name)
