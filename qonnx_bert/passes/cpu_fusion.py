"""Fuse a ``target=cpu`` QDQ model into the CPU provider's transformer kernels.

ONNX Runtime's own fast int8 BERT (its transformer optimizer, then dynamic quantization)
runs fused ``Attention``, ``SkipLayerNormalization`` and ``BiasGelu`` kernels; a QDQ graph
of separate MatMuls, Reshapes, Transposes and Softmax runs several times as many kernels.
Here the float parts of the quantized graph are fused by the ``onnxscript`` rewriter's ORT
fusions (``optimize_for_ort``: exact float rewrites), and each fused ``Attention`` whose input
is a quantized activation and whose Q/K/V weights are int8 becomes the static twin of the
dynamic graph's ``QAttention``: the same uint8 input on its calibrated grid and the same
per-column int8 weights, in one integer kernel. ``QAttention`` takes the padding mask as
the raw ``attention_mask`` (masked keys get -10000 instead of the float minimum: both give
exactly zero weight after the softmax's exp in float32). Written here because neither ORT's
quantizer nor the rewriter turns a static QDQ Attention into ``QAttention``.

The one fused kernel not kept is ``SkipLayerNormalization``: ORT's CPU kernel for it is a
scalar loop with a division per element, while its ``LayerNormalization`` is vectorized
(``bench/cpu_peers.py``'s ``ort-dynamic-vln`` row measures what that costs the dynamic model),
so it is decomposed again after the rewriter's fusions.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper
from onnx_ir.passes.common import RemoveUnusedNodesPass
from onnxscript.rewriter import pattern

from qonnx_bert.graph.canonicalize import SkipLayerNormDecomposition

MS_DOMAIN = "com.microsoft"
MASK_INPUT = "attention_mask"
MASK_INDEX = "qonnx_cpu_mask_index"
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


def fuse_for_cpu(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its float parts fused and its attention projections in ``QAttention``."""
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    fused = ir.from_proto(model)
    optimize_for_ort(fused)
    vectorized_layer_norms(fused)
    out = ir.to_proto(fused)
    if _static_attention(out):
        fused = ir.from_proto(out)
        RemoveUnusedNodesPass()(fused)
        out = ir.to_proto(fused)
    return out


def vectorized_layer_norms(model: ir.Model) -> int:
    """Each ``SkipLayerNormalization`` whose side outputs are unread becomes ``LayerNormalization(Sum(x + bias,
    skip))``, in place; how many. ``Sum``: ORT's session-time fusion would turn ``Add`` back into the slow kernel."""
    return pattern.RewriteRuleSet([SkipLayerNormDecomposition.rule(residual="Sum")]).apply_to_model(model)


def _attention_parts(model: onnx.ModelProto, node: onnx.NodeProto, producer: dict, inits: dict):
    """(input DequantizeLinear, [weight DequantizeLinear x3]) of a fusable Attention, else None."""
    if node.op_type != "Attention" or node.domain != MS_DOMAIN or len(node.input) < 3 or node.input[2] not in inits:
        return None
    if any(name for name in node.input[3:5]):  # a mask index or a past state: not BERT's encoder attention
        return None
    if len(node.input) > 5 and node.input[5] and not _padding_bias(model, node.input[5], producer, inits):
        return None
    if any(name for name in node.input[6:]):
        return None
    x, w = producer.get(node.input[0]), producer.get(node.input[1])
    if x is None or x.op_type != "DequantizeLinear" or x.input[0] not in producer:
        return None
    if w is None or w.op_type != "Concat" or len(w.input) != 3:
        return None
    parts = [producer.get(i) for i in w.input]
    if not all(p is not None and p.op_type == "DequantizeLinear" and p.input[0] in inits for p in parts):
        return None
    if len({tuple(inits[p.input[0]].dims) for p in parts}) != 1:
        return None
    return x, parts


def _padding_bias(model: onnx.ModelProto, name: str, producer: dict, inits: dict) -> bool:
    """Whether ``name`` is computed from the graph inputs, shapes and float scalars only (the padding mask, not a
    learned bias such as a relative position table)."""
    seen, todo = set(), [name]
    while todo:
        tensor = todo.pop()
        if tensor in seen or not tensor:
            continue
        seen.add(tensor)
        node = producer.get(tensor)
        value = inits.get(tensor)
        if node is not None and node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
        if value is not None:
            if value.data_type in _FLOATS and int(np.prod(value.dims)) > 1:  # a learned bias, not a fill value
                return False
            continue
        if node is not None:  # else a graph input
            todo.extend(node.input)
    return True


def _weights(parts: list[onnx.NodeProto], inits: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The int8 [in, 3*out] weight, its per-column scales and zero points."""
    values, scales, zeros = [], [], []
    for p in parts:
        q = numpy_helper.to_array(inits[p.input[0]])
        columns = q.shape[1]
        values.append(q)
        scales.append(np.broadcast_to(numpy_helper.to_array(inits[p.input[1]]), (columns,)))
        zero = numpy_helper.to_array(inits[p.input[2]]) if len(p.input) > 2 else np.zeros((), q.dtype)
        zeros.append(np.broadcast_to(zero, (columns,)))
    return np.concatenate(values, axis=1), np.concatenate(scales).astype(np.float32), np.concatenate(zeros)


def _static_attention(model: onnx.ModelProto) -> int:
    """Replace each fusable float Attention by QAttention, in place; how many."""
    graph = model.graph
    if MASK_INPUT not in {i.name for i in graph.input}:
        return 0
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    nodes, changed = [], 0
    for node in graph.node:
        found = _attention_parts(model, node, producer, inits)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        sizes = attrs.pop("qkv_hidden_sizes", None)
        if found is None or (sizes is not None and len(set(sizes)) != 1) or set(attrs) - {"num_heads"}:
            nodes.append(node)
            continue
        x_dq, parts = found
        weight, scale, zero = _weights(parts, inits)
        stem = node.name or node.output[0]
        graph.initializer.extend(
            [
                numpy_helper.from_array(weight, f"{stem}.qkv_weight"),
                numpy_helper.from_array(scale, f"{stem}.qkv_weight_scale"),
                numpy_helper.from_array(zero, f"{stem}.qkv_weight_zero_point"),
            ]
        )
        x_zero = x_dq.input[2] if len(x_dq.input) > 2 else ""
        inputs = [
            x_dq.input[0],
            f"{stem}.qkv_weight",
            node.input[2],
            x_dq.input[1],
            f"{stem}.qkv_weight_scale",
            MASK_INDEX,
            x_zero,
            f"{stem}.qkv_weight_zero_point",
        ]
        nodes.append(
            helper.make_node(
                "QAttention", inputs, list(node.output[:1]), name=f"{stem}.static", domain=MS_DOMAIN, **attrs
            )
        )
        changed += 1
    if changed:
        cast = helper.make_node("Cast", [MASK_INPUT], [MASK_INDEX], name=MASK_INDEX, to=onnx.TensorProto.INT32)
        del graph.node[:]
        graph.node.extend([cast, *nodes])
    return changed
