"""Constant-index GatherND as Reshape or Gather: exact, and what a fixed-shape graph needs.

Transformers builds the padding mask as ``mask[batch_idx, kv_idx]``; torch.onnx writes it as a
bool GatherND whose indices become constants once batch and length are fixed. QNN HTP rejects
GatherND, so both the QDQ writer's HTP rules and the fixed-shape twin of a written QDQ file
rewrite it here (hand-written: onnxscript's optimizer folds the indices but keeps the GatherND).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qonnx_bert.graph.shapes import inferred
from qonnx_bert.graph.weightless import is_stub


def _constant_indices(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    ints = (onnx.TensorProto.INT32, onnx.TensorProto.INT64)
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type in ints and not is_stub(i)}


def _static_shape(model: onnx.ModelProto, name: str) -> tuple[int, ...] | None:
    for v in list(model.graph.input) + list(model.graph.value_info):
        if v.name == name:
            dims = v.type.tensor_type.shape.dim
            return tuple(d.dim_value for d in dims) if all(d.HasField("dim_value") for d in dims) else None
    return None


def constant_gather_nd(model: onnx.ModelProto) -> int:
    """Rewrite GatherND with constant indices (batch_dims 0) as Reshape, or Reshape + Gather.

    With constant indices on a static input it is a fixed selection of the flattened input:
    a Reshape when the selection is the identity, otherwise a Gather of flat positions.
    Returns how many.
    """
    indices = _constant_indices(model)
    shapes = inferred(model)
    nodes, changed = [], 0
    for node in model.graph.node:
        shape = _static_shape(shapes, node.input[0]) if node.op_type == "GatherND" else None
        batch_dims = next((a.i for a in node.attribute if a.name == "batch_dims"), 0)
        if shape is None or batch_dims or node.input[1] not in indices:
            nodes.append(node)
            continue
        nodes.extend(_gather_nd_as_reshape(model, node, shape, indices[node.input[1]]))
        changed += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return changed


def _gather_nd_as_reshape(
    model: onnx.ModelProto, node: onnx.NodeProto, shape: tuple[int, ...], idx: np.ndarray
) -> list:
    """The equivalent Reshape (identity selection) or Reshape + Gather of a constant-index GatherND."""
    depth = idx.shape[-1]
    strides = np.array([int(np.prod(shape[k + 1 : depth])) for k in range(depth)], np.int64)
    flat = (idx.reshape(-1, depth) @ strides).astype(np.int64)
    inner = tuple(shape[depth:])
    out_shape = np.array(idx.shape[:-1] + inner, np.int64)
    stem = node.name or node.output[0]
    if not inner and np.array_equal(flat, np.arange(int(np.prod(shape)))):
        model.graph.initializer.append(numpy_helper.from_array(out_shape, f"{stem}_shape"))
        return [helper.make_node("Reshape", [node.input[0], f"{stem}_shape"], list(node.output), name=stem)]
    flat_shape = np.array([int(np.prod(shape[:depth])), *inner], np.int64)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(flat_shape, f"{stem}_flat_shape"),
            numpy_helper.from_array(flat.reshape(idx.shape[:-1]), f"{stem}_flat_indices"),
        ]
    )
    return [
        helper.make_node("Reshape", [node.input[0], f"{stem}_flat_shape"], [f"{stem}_flat"], name=f"{stem}_flat"),
        helper.make_node("Gather", [f"{stem}_flat", f"{stem}_flat_indices"], list(node.output), name=stem, axis=0),
    ]
