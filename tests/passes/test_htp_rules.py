"""HTP rule diagnosis on hand-built QDQ node units: each broken rule is named, with its fix."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qonnx_bert.graph.qdq import QdqView
from qonnx_bert.passes.htp_rules import RULES, diagnose

U8, I8, U16 = np.uint8, np.int8, np.uint16


def _dq(name: str, dtype, inits: list, shape=(4,)) -> onnx.NodeProto:
    """DequantizeLinear of an initializer ``name`` stored as ``dtype``: its output is ``name``."""
    inits += [
        numpy_helper.from_array(np.zeros(shape, dtype), f"{name}_quantized"),
        numpy_helper.from_array(np.float32(0.1), f"{name}_scale"),
        numpy_helper.from_array(np.zeros((), dtype), f"{name}_zp"),
    ]
    return helper.make_node("DequantizeLinear", [f"{name}_quantized", f"{name}_scale", f"{name}_zp"], [name])


def _q(name: str, dtype, inits: list) -> onnx.NodeProto:
    inits += [
        numpy_helper.from_array(np.float32(0.1), f"{name}_qs"),
        numpy_helper.from_array(np.zeros((), dtype), f"{name}_qz"),
    ]
    return helper.make_node("QuantizeLinear", [name, f"{name}_qs", f"{name}_qz"], [f"{name}_q"])


def _unit(op: str, inputs: dict[str, object], out_type, **attrs) -> tuple[QdqView, onnx.NodeProto]:
    """One node unit, output quantized. An input is an activation of a dtype (a graph input through Q -> DQ),
    ``("const", dtype)`` a dequantized initializer, ``"float constant"``, or None (a float graph input)."""
    inits, nodes = [], []
    graph_inputs = []
    for name, kind in inputs.items():
        if kind is None or (isinstance(kind, type) and issubclass(kind, np.integer)):
            raw = name if kind is None else f"{name}_raw"
            graph_inputs.append(helper.make_tensor_value_info(raw, TensorProto.FLOAT, [4]))
            if kind is not None:
                quant = _q(raw, kind, inits)
                zp = next(i for i in inits if i.name == f"{raw}_qz")
                nodes += [quant, helper.make_node("DequantizeLinear", [quant.output[0], f"{raw}_qs", zp.name], [name])]
        elif kind == "float constant":
            inits.append(numpy_helper.from_array(np.ones(4, np.float32), name))
        else:
            nodes.append(_dq(name, kind[1], inits))
    node = helper.make_node(op, list(inputs), ["y"], name="unit", **attrs)
    nodes += [node, _q("y", out_type, inits)]
    graph = helper.make_graph(
        nodes, "g", graph_inputs, [helper.make_tensor_value_info("y_q", TensorProto.UINT8, [4])], inits
    )
    return QdqView(helper.make_model(graph)), node


@pytest.mark.parametrize(
    "op, inputs, out, problem",
    [
        ("Erf", {"x": U8}, U8, "Erf is not an HTP op"),
        ("LayerNormalization", {"x": U8, "g": ("const", I8), "b": "float constant"}, U8, "LayerNorm gamma is int8"),
        ("LayerNormalization", {"x": U16, "g": ("const", U8), "b": ("const", U16)}, U16, "LayerNorm beta is uint16"),
        ("Add", {"x": U8, "z": U16}, U16, "mixed u8/u16 activations"),
        ("Add", {"x": U8, "c": ("const", I8)}, U8, "constant c is int8 under uint8 activations"),
        ("MatMul", {"x": U8, "w": ("const", U16)}, U8, "uint16 weights with uint8 activations"),
        ("Mul", {"x": U8, "c": "float constant"}, U8, "float constant input c"),
        ("Add", {"x": U8, "f": None}, U8, "float tensor f between quantized ops"),
    ],
)
def test_each_broken_rule_is_named(op, inputs, out, problem):
    view, node = _unit(op, inputs, out)
    found, fix = diagnose(view, node)
    assert found.startswith(problem) and fix


def test_a_clean_unit_gets_the_generic_answer_and_rules_have_names():
    view, node = _unit("Add", {"x": U8, "c": ("const", U8)}, U8)
    assert diagnose(view, node)[0] == "QNN cannot map this node unit to a fixed-point op"
    assert len({r.name for r in RULES}) == len(RULES) and all(r.fixed_by for r in RULES)
