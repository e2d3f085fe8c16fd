"""Reading and editing QDQ graphs: which quantizer holds a tensor, the integer type a node sees."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

QTYPE_NAMES = {
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT16: "uint16",
    onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT4: "int4",  # low-bit weights and embedding tables (quantize.lowbit)
    onnx.TensorProto.UINT4: "uint4",
    onnx.TensorProto.INT2: "int2",
    onnx.TensorProto.UINT2: "uint2",
}
BITS = {onnx.TensorProto.UINT8: 8, onnx.TensorProto.INT8: 8, onnx.TensorProto.UINT16: 16, onnx.TensorProto.INT16: 16}
# ORT's quantizer renames the producer output of a quantized graph output to this suffix, so the
# graph output keeps its name as the DequantizeLinear's output.
GRAPH_OUTPUT_SUFFIX = "_QuantizeLinear_Input"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def is_qdq(node: onnx.NodeProto) -> bool:
    return node.op_type in QDQ_OPS


def quantizer_of(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    """The QuantizeLinear of ``tensor`` (under its own name or, for a graph output, ORT's renamed one)."""
    names = (tensor, tensor + GRAPH_OUTPUT_SUFFIX)
    return next((n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in names), None)


@dataclass
class QdqView:
    """Producers, consumers and initializers of a QDQ model: the types a node unit sees."""

    model: onnx.ModelProto

    def __post_init__(self) -> None:
        self.inits = {i.name: i for i in self.model.graph.initializer}
        self.producer = {o: n for n in self.model.graph.node for o in n.output}
        self.nodes = {n.name: n for n in self.model.graph.node}

    def _zero_point_type(self, node: onnx.NodeProto) -> str:
        """The integer type of a Q/DQ: its zero point's, else a DQ'd initializer's, else uint8 (ONNX default)."""
        zp = self.inits.get(node.input[2]) if len(node.input) > 2 else None
        data = self.inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        known = zp if zp is not None else data
        return QTYPE_NAMES.get(known.data_type, "?") if known is not None else "uint8"

    def input_type(self, name: str) -> str:
        """``uint8``... when fed by a DequantizeLinear, ``float constant`` or ``float`` otherwise."""
        node = self.producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear":
            return self._zero_point_type(node)
        init = self.inits.get(name)
        if init is None:
            return "float"
        return (
            "float constant"
            if init.data_type == onnx.TensorProto.FLOAT
            else QTYPE_NAMES.get(init.data_type, "integer constant")
        )

    def is_dequantized_constant(self, name: str) -> bool:
        node = self.producer.get(name)
        return node is not None and node.op_type == "DequantizeLinear" and node.input[0] in self.inits

    def output_type(self, name: str) -> str:
        q = [n for n in self.model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == name]
        return self._zero_point_type(q[0]) if q else "float"


def unit_owner(view: QdqView, node: onnx.NodeProto) -> onnx.NodeProto:
    """The compute node a rejected Q/DQ node belongs to (its consumer or producer); else itself."""
    if node.op_type == "DequantizeLinear":
        users = [n for n in view.model.graph.node if node.output[0] in n.input and not is_qdq(n)]
        return users[0] if users else node
    if node.op_type == "QuantizeLinear":
        producer = view.producer.get(node.input[0])
        return producer if producer is not None and not is_qdq(producer) else node
    return node
