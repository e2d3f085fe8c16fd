"""Read the graph QNN actually built (``dump_json_qnn_graph``) and find float work in it.

CPU fallback disabled proves every ONNX node was *assigned* to QNN, not that it
runs quantized: for a node unit it cannot map to a fixed-point op (mixed u8/u16,
a float op between QDQ'd ops, an unquantized constant), QNN EP silently emits
Dequantize -> fp32 op -> Quantize inside its own graph. The dumped JSON shows
every QNN tensor's data type, so float work is visible there. The only float
tensors allowed are the graph inputs of a Quantize and the graph outputs of a
Dequantize (the I/O conversions at the model's edge).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# QNN_DATATYPE_* codes and QNN_TENSOR_TYPE_* codes (QnnTypes.h).
FLOAT_TYPES = {0x0232: "fp32", 0x0216: "fp16"}
FIXED_TYPES = {0x0408: "uint8", 0x0308: "int8", 0x0416: "uint16", 0x0316: "int16", 0x0432: "uint32", 0x0332: "int32"}
GRAPH_INPUT, GRAPH_OUTPUT = 0, 1
_ELEMENTWISE_PREFIX = "ElementWise"


@dataclass(frozen=True)
class QnnNode:
    """A node of the QNN graph: QNN op type and the data type of each input/output tensor."""

    name: str
    op_type: str
    inputs: tuple[tuple[str, int, int], ...]  # (tensor, data_type, tensor_type)
    outputs: tuple[tuple[str, int, int], ...]

    def float_tensors(self) -> list[str]:
        return [f"{t} ({FLOAT_TYPES[d]})" for t, d, _ in self.inputs + self.outputs if d in FLOAT_TYPES]

    def is_edge_conversion(self) -> bool:
        """A Quantize of a graph input or a Dequantize to a graph output: float there is expected."""
        if self.op_type == "Quantize":
            return all(k == GRAPH_INPUT for _, d, k in self.inputs if d in FLOAT_TYPES)
        if self.op_type == "Dequantize":
            return all(k == GRAPH_OUTPUT for _, d, k in self.outputs if d in FLOAT_TYPES)
        return False


def load_qnn_nodes(directory: Path) -> list[QnnNode]:
    """Every node of every QNN graph dumped in ``directory`` (one JSON per partition)."""
    nodes = []
    for path in sorted(directory.glob("*.json")):
        if path.name.endswith("_tensor_log.json"):
            continue
        graph = json.loads(path.read_text())["graph"]
        tensors = graph["tensors"]

        def typed(names, tensors=tensors):
            return tuple((n, tensors[n]["data_type"], tensors[n]["type"]) for n in names if n in tensors)

        for name, node in graph["nodes"].items():
            nodes.append(QnnNode(name, node["type"], typed(node["input_names"]), typed(node["output_names"])))
    return nodes


def float_nodes(nodes: list[QnnNode]) -> list[QnnNode]:
    """QNN nodes that compute on float tensors, edge conversions excepted."""
    return [n for n in nodes if n.float_tensors() and not n.is_edge_conversion()]


def mixed_type_nodes(nodes: list[QnnNode]) -> list[QnnNode]:
    """Elementwise QNN nodes whose 8/16-bit operands differ in type (e.g. uint8 + int8 constant).

    QNN accepts these, but HTP runs such an Add in float internally (measured:
    an int8 bias on a uint8 Add); the JSON cannot show it, so it is caught here.
    """
    out = []
    for node in nodes:
        kinds = {
            FIXED_TYPES[d] for _, d, _ in node.inputs + node.outputs if d in FIXED_TYPES and "32" not in FIXED_TYPES[d]
        }
        if node.op_type.startswith(_ELEMENTWISE_PREFIX) and len(kinds) > 1:
            out.append(node)
    return out


def tensor_types(node: QnnNode) -> str:
    """``uint8, int8 -> uint8``: a short type signature for reports."""

    def name(d: int) -> str:
        return FIXED_TYPES.get(d) or FLOAT_TYPES.get(d) or f"type {d:#x}"

    return f"{', '.join(name(d) for _, d, _ in node.inputs)} -> {', '.join(name(d) for _, d, _ in node.outputs)}"
