"""The ONNX operators of an exported BERT-style encoder, in PyTorch (differentiable where it matters).

Hand-written because QAT must train through exactly the graph ONNX Runtime deploys, node for
node, and no maintained ONNX-to-PyTorch converter is installed (onnx2torch does not take QDQ
graphs with learnable quantizers). Each entry takes the node and its input tensors, and gives its
output (a tuple: its outputs).
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F

_TYPES = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.BOOL: torch.bool}


def attr(node: onnx.NodeProto, name: str, default=None):
    found = next((a for a in node.attribute if a.name == name), None)
    value = default if found is None else onnx.helper.get_attribute_value(found)
    return value.decode() if isinstance(value, bytes) else value


def _gather(node, x, idx):
    axis = attr(node, "axis", 0) % x.dim()
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1 :])


def _slice(node, x, starts, ends, axes=None, steps=None):
    axes = range(len(starts)) if axes is None else axes.tolist()
    steps = [1] * len(starts) if steps is None else steps.tolist()
    index = [slice(None)] * x.dim()
    for a, s, e, st in zip(axes, starts.tolist(), ends.tolist(), steps):
        index[a] = slice(s, min(e, x.shape[a]), st)
    return x[tuple(index)]


def _unsqueeze(node, x, axes):
    for a in sorted(a % (x.dim() + len(axes)) for a in axes.tolist()):
        x = x.unsqueeze(a)
    return x


def _split(node, x, split=None):
    axis = attr(node, "axis", 0)
    if split is None:  # opset 18: num_outputs parts, the last one smaller if the axis does not divide
        parts = attr(node, "num_outputs", len(node.output))
        size = -(-x.shape[axis] // parts)
        return torch.split(x, size, axis)
    return torch.split(x, split.tolist(), axis)


def _gemm(node, a, b, c=None):
    a = a.transpose(-1, -2) if attr(node, "transA", 0) else a
    b = b.transpose(-1, -2) if attr(node, "transB", 0) else b
    y = attr(node, "alpha", 1.0) * (a @ b)
    return y if c is None else y + attr(node, "beta", 1.0) * c


def _layer_norm(node, x, gamma, beta=None):
    axis = attr(node, "axis", -1) % x.dim()
    return F.layer_norm(x, x.shape[axis:], gamma, beta, attr(node, "epsilon", 1e-5))


OPS = {
    "Add": lambda n, a, b: a + b,
    "Sub": lambda n, a, b: a - b,
    "Mul": lambda n, a, b: a * b,
    "Div": lambda n, a, b: a / b,
    "Max": lambda n, *xs: torch.stack(torch.broadcast_tensors(*xs)).amax(0),
    "And": lambda n, a, b: a & b,
    "GreaterOrEqual": lambda n, a, b: a >= b,
    "Equal": lambda n, a, b: a == b,
    "Where": lambda n, c, a, b: torch.where(c, a, b),
    "MatMul": lambda n, a, b: a @ b,
    "Gemm": _gemm,
    "Tanh": lambda n, x: torch.tanh(x),
    "Softmax": lambda n, x: torch.softmax(x, attr(n, "axis", -1)),
    "Gelu": lambda n, x: F.gelu(x, approximate=attr(n, "approximate", "none")),
    "LayerNormalization": _layer_norm,
    "Gather": _gather,
    "GatherND": lambda n, x, idx: x[tuple(idx.unbind(-1))],
    "Reshape": lambda n, x, shape: x.reshape(shape.tolist()),
    "Transpose": lambda n, x: x.permute(attr(n, "perm")),
    "Unsqueeze": _unsqueeze,
    "Squeeze": lambda n, x, axes=None: x.squeeze() if axes is None else x.squeeze(tuple(axes.tolist())),
    "Shape": lambda n, x: torch.tensor(x.shape[attr(n, "start", 0) : attr(n, "end", None)], dtype=torch.int64),
    "Concat": lambda n, *xs: torch.cat(xs, attr(n, "axis")),
    "Split": _split,
    "Slice": _slice,
    "Range": lambda n, s, e, d: torch.arange(s.item(), e.item(), d.item(), dtype=s.dtype),
    "Expand": lambda n, x, shape: x.expand(torch.broadcast_shapes(x.shape, tuple(shape.tolist()))),
    "Cast": lambda n, x: x.to(_TYPES[attr(n, "to")]),
}
