"""Why HTP refuses (or floats) an ONNX node unit, and the fix, from the node's QDQ types.

QNN only says "error code 3110" (op config not supported). The QDQ types around
the node say which measured HTP rule it breaks (see ``passes.htp_rules`` and the
field notes): Erf, an int8 LayerNorm gamma, mixed u8/u16 operands, an int8 Add
constant, 16-bit weights under 8-bit activations, a float op between QDQ'd ops.
"""

from __future__ import annotations

import onnx

from qonnx_bert.graph.ops import ELEMENTWISE_OPS
from qonnx_bert.graph.qdq import QdqView, is_qdq

CONVERT_FIX = "insert a convert (DQ -> Q) before the op so that its inputs and output share one type"


def _activation_types(view: QdqView, node: onnx.NodeProto) -> set[str]:
    """The 8/16-bit types of the node's non-constant inputs and of its outputs."""
    ins = [view.input_type(i) for i in node.input if i and i not in view.inits and not view.is_dequantized_constant(i)]
    return {t for t in ins + [view.output_type(o) for o in node.output] if t in ("uint8", "uint16", "int8", "int16")}


def diagnose(view: QdqView, node: onnx.NodeProto) -> tuple[str, str]:
    """(problem, fix) for an ONNX node that HTP rejected or runs in float."""
    op = node.op_type
    if op == "Erf":
        return (
            "Erf is not an HTP op (an unfused GELU)",
            "Erf: fuse GELU into one Gelu op before quantizing (export at opset >= 20, or onnxscript's erf-GELU rewrite)",
        )
    if op == "GatherND":
        return (
            "GatherND is rejected by HTP",
            "rewrite a constant-index GatherND as Reshape/Gather (qonnx's HTP rules do this for the attention mask; re-run `qonnx quantize`)",
        )
    if op == "LayerNormalization":
        found = _layernorm_problem(view, node)
        if found:
            return found
    kinds = _activation_types(view, node)
    if {"uint8", "uint16"} <= kinds:
        return f"mixed u8/u16 activations ({', '.join(sorted(kinds))})", f"mixed u8/u16 inputs: {CONVERT_FIX}"
    return _constant_problem(view, node, kinds) or _float_problem(view, node)


def _layernorm_problem(view: QdqView, node: onnx.NodeProto) -> tuple[str, str] | None:
    gamma = view.input_type(node.input[1]) if len(node.input) > 1 else "uint8"
    if gamma != "uint8":
        return (
            f"LayerNorm gamma is {gamma}",
            "LayerNorm gamma must be uint8 (asymmetric), also under 16-bit activations: drop the override on it (qonnx's HTP rules set uint8)",
        )
    beta = view.input_type(node.input[2]) if len(node.input) > 2 and node.input[2] else "int32"
    if beta not in ("int32", "float constant"):
        return (
            f"LayerNorm beta is {beta}",
            "LayerNorm beta must stay ORT's int32 bias (scale = input scale x gamma scale): drop the override on it",
        )
    return None


def _constant_problem(view: QdqView, node: onnx.NodeProto, acts: set[str]) -> tuple[str, str] | None:
    """Constants in the wrong type: an elementwise constant off the activation type, 16-bit weights under 8-bit activations."""
    consts = {
        view.producer[i].input[0].removesuffix("_quantized"): view.input_type(i)
        for i in node.input
        if i and view.is_dequantized_constant(i)
    }
    act = next(iter(acts)) if len(acts) == 1 else None
    wrong = [(name, t) for name, t in consts.items() if act and t != act]
    if node.op_type in ELEMENTWISE_OPS and wrong:
        name, t = wrong[0]
        return (
            f"constant {name} is {t} under {act} activations",
            f"{node.op_type} constant (bias) must be in the activation type ({act}, asymmetric)",
        )
    if node.op_type in ("MatMul", "Gemm") and "uint16" in consts.values() and acts == {"uint8"}:
        return (
            "uint16 weights with uint8 activations",
            "use int8 weights, or 16-bit activations on both sides of the MatMul",
        )
    float_consts = [i for i in node.input if view.input_type(i) == "float constant"]
    if float_consts:
        return (
            f"float constant input {float_consts[0]}",
            "quantize the constant in the activation type (a DQ'd initializer)",
        )
    return None


def _float_problem(view: QdqView, node: onnx.NodeProto) -> tuple[str, str]:
    floats = [i for i in node.input if i and view.input_type(i) == "float"]
    floats += [o for o in node.output if view.output_type(o) == "float"]
    if floats:
        return (
            f"float tensor {floats[0]} between quantized ops",
            f"add a Q/DQ pair on {floats[0]} so HTP gets a fixed-point {node.op_type} (or fuse the pattern into an op HTP quantizes)",
        )
    return (
        "QNN cannot map this node unit to a fixed-point op",
        "keep the node unit's inputs and outputs in one 8- or 16-bit type (per-tensor); see QNN's HTP op definitions",
    )


def unit_owner(view: QdqView, node: onnx.NodeProto) -> onnx.NodeProto:
    """The compute node a rejected Q/DQ node belongs to (its consumer or producer); else itself."""
    if node.op_type == "DequantizeLinear":
        users = [n for n in view.model.graph.node if node.output[0] in n.input and not is_qdq(n)]
        return users[0] if users else node
    if node.op_type == "QuantizeLinear":
        producer = view.producer.get(node.input[0])
        return producer if producer is not None and not is_qdq(producer) else node
    return node
