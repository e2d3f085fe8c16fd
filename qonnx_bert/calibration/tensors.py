"""Which activations get quantized, and where their padding positions are.

The selection mirrors ONNX Runtime's own (``CalibraterBase.select_tensors_to_calibrate``):
every float input/output of a node whose type ORT's QDQ quantizer handles, minus
initializers. We compute it ourselves because ORT's selection needs a calibrator
object built from a file; the rule is the same, so the quantizer finds a range for
every tensor it quantizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

from qonnx_bert.graph.shapes import value_infos

# Gelu is not in ORT's registries: its input and output are quantized by the ops around
# it. PEG's split GELU output is read only by a Split kept from the quantizer, so Gelu is
# listed (ORT's generic handler then quantizes its output too; the same tensors as before).
# ReduceSum, Div and LpNormalization are the mean pooling and L2 normalisation of a
# feature-extraction export (BERT-style encoders have none elsewhere: their attention scale
# is a Mul). The CPU provider runs them in float between DQ and Q either way; quantized,
# HTP runs them in fixed point instead of rejecting the graph's float ops.
POOLING_OP_TYPES = {"ReduceSum", "Div", "LpNormalization"}
QUANTIZED_OP_TYPES = tuple(sorted(set(QDQRegistry) | set(QLinearOpsRegistry) | {"Gelu"} | POOLING_OP_TYPES))
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
MASK_INPUT = "attention_mask"
TOKEN_INPUTS = ("input_ids", "token_type_ids")
_SHAPE_OPS = {"Shape", "Size"}  # their outputs depend on a tensor's shape, not its values


@dataclass(frozen=True)
class TensorLayout:
    """Where the batch and sequence axes of an activation are.

    ``seq_axes`` are the axes indexed by token position (two for attention
    scores). ``mask_path`` tensors depend on the attention mask only (the
    additive mask): their padding positions *are* their content, so they are
    calibrated unmasked.
    """

    name: str
    seq_axes: tuple[int, ...]
    mask_path: bool


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    return {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in value_infos(model)
        if v.type.tensor_type.elem_type in _FLOAT_TYPES
    }


def _depends_on(model: onnx.ModelProto, inputs: tuple[str, ...]) -> set[str]:
    """Tensors whose values are computed from the given graph inputs."""
    reached = {i.name for i in model.graph.input if i.name in inputs}
    for node in model.graph.node:  # graph nodes are in topological order
        if node.op_type not in _SHAPE_OPS and any(i in reached for i in node.input):
            reached.update(node.output)
    return reached


def _mask_only_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors computed from the attention mask, never from the tokens: the additive mask."""
    return _depends_on(model, (MASK_INPUT,)) - _depends_on(model, TOKEN_INPUTS)


def _seq_axes(shape: list, seq_dim) -> tuple[int, ...]:
    """Axes indexed by token position. With a symbolic sequence length the dimension's name
    says which. With a static one (``--static-shape 1,64``) a channel axis can have the same
    size (a 64-dimension PEG group, the 32-wide pooler output at 1x32), so the last axis
    counts only as the key axis of a (B, H, T, T) attention matrix."""
    if not isinstance(seq_dim, int):
        return tuple(i for i, d in enumerate(shape) if i > 0 and d == seq_dim)
    last = len(shape) - 1
    return tuple(
        i
        for i, d in enumerate(shape)
        if 0 < i and d == seq_dim and (i < last or (len(shape) == 4 and shape[last - 1] == seq_dim))
    )


def quantizable_tensors(model: onnx.ModelProto, op_types: tuple[str, ...] = QUANTIZED_OP_TYPES) -> list[TensorLayout]:
    """Every activation ORT's QDQ quantizer will quantize, with its layout, in graph order."""
    shapes = _shapes(model)
    inits = {i.name for i in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input}
    ids = inputs.get("input_ids")
    seq_dim = ids.type.tensor_type.shape.dim[1] if ids is not None else None
    seq_dim = (seq_dim.dim_param or seq_dim.dim_value) if seq_dim is not None else None
    mask_only = _mask_only_tensors(model)
    seen: dict[str, TensorLayout] = {}
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        for name in list(node.input) + list(node.output):
            if name and name in shapes and name not in inits and name not in seen:
                seen[name] = TensorLayout(name, _seq_axes(shapes[name], seq_dim), name in mask_only)
    return list(seen.values())
