"""Name the transformer roles of an exported encoder graph, per layer.

Every scheme addresses tensors by role (``layer.3.ffn.residual_sum``), never by
the exporter's generated names. Roles are found structurally, so any exporter
that emits ``Softmax`` and ``LayerNormalization`` works (BERT, RoBERTa,
DistilBERT layouts). Per layer, from the attention ``Softmax``::

    scores = MatMul(q, k^T) -> [Mul|Div scale] -> softmax_input = Add(., mask)
    softmax_output -> context = MatMul(., v) -> Transpose/Reshape
      -> attention.output = MatMul(W_o) + b -> attention.residual_sum = Add(., x)
      -> attention.layernorm (= ffn.input)
      -> ffn.intermediate = MatMul(W_1) + b -> ffn.gelu
      -> ffn.output = MatMul(W_2) + b -> ffn.residual_sum = Add(., ffn.input)
      -> ffn.layernorm (the layer's output)
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import onnx
import onnx_ir as ir

from qonnx_bert.core.errors import UsageError

_LAYOUT_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Cast"}
FFN_ROLES = ("input", "intermediate", "gelu", "output", "residual_sum", "layernorm")
ATTENTION_ROLES = (
    "query",
    "key",
    "value",
    "scores",
    "softmax_input",
    "softmax_output",
    "context",
    "output",
    "residual_sum",
    "layernorm",
)


@dataclass
class RoleMap:
    """role name -> tensor name, in graph order, plus the layer count."""

    roles: dict[str, str] = field(default_factory=dict)
    num_layers: int = 0

    def tensor(self, role: str) -> str:
        if role not in self.roles:
            raise UsageError(f"no role {role!r} in this model; known roles: {', '.join(self.roles)}")
        return self.roles[role]

    def select(self, pattern: str) -> list[str]:
        """Roles matching a glob (``layer.*.ffn.output``) or range (``layer.4-5.ffn.*``)."""
        return [r for r in self.roles if any(fnmatch.fnmatchcase(r, p) for p in expand_layer_ranges(pattern))]

    def role_of(self, *, last: bool = False) -> dict[str, str]:
        """tensor name -> first (or ``last``) role naming it (FFN input and attention LayerNorm share a tensor)."""
        out: dict[str, str] = {}
        for role, tensor in self.roles.items():
            if last:
                out[tensor] = role
            else:
                out.setdefault(tensor, role)
        return out


def expand_layer_ranges(pattern: str) -> list[str]:
    """``layer.10-11.ffn.*`` -> ``["layer.10.ffn.*", "layer.11.ffn.*"]``."""
    parts = pattern.split(".")
    for i, part in enumerate(parts):
        lo, sep, hi = part.partition("-")
        if sep and lo.isdigit() and hi.isdigit():
            return [
                p
                for k in range(int(lo), int(hi) + 1)
                for p in expand_layer_ranges(".".join(parts[:i] + [str(k)] + parts[i + 1 :]))
            ]
    return [pattern]


class _Walker:
    """Small graph-walking helpers over an onnx_ir graph."""

    def __init__(self, graph: ir.Graph):
        self.graph = graph

    @staticmethod
    def is_const(value: ir.Value | None) -> bool:
        return value is not None and (value.const_value is not None or value.is_initializer())

    @staticmethod
    def consumers(value: ir.Value, op: str | None = None) -> list[ir.Node]:
        return [u.node for u in value.uses() if op is None or u.node.op_type == op]

    def skip_layout_forward(self, value: ir.Value) -> ir.Value:
        """Follow a chain of layout ops; ``Shape`` readers (TorchScript's dynamic reshapes) don't branch it."""
        while True:
            users = [n for n in self.consumers(value) if n.op_type != "Shape"]
            if len(users) != 1 or users[0].op_type not in _LAYOUT_OPS:
                return value
            nxt = users
            value = nxt[0].outputs[0]

    def skip_layout_back(self, value: ir.Value) -> ir.Value:
        node = value.producer()
        while node is not None and node.op_type in _LAYOUT_OPS | {"Mul", "Div"}:
            value = node.inputs[0]
            node = value.producer()
        return value

    def linear_after(self, value: ir.Value) -> ir.Value | None:
        """Output of ``Add(MatMul(value, W), b)`` (or a Gemm) consuming ``value``; None if absent."""
        for node in self.consumers(value):
            if node.op_type == "Gemm" or (node.op_type == "MatMul" and self.is_const(node.inputs[1])):
                out = node.outputs[0]
                adds = self.consumers(out, "Add")
                if len(adds) == 1 and any(self.is_const(i) for i in adds[0].inputs):
                    return adds[0].outputs[0]
                return out
        return None

    def residual_add(self, value: ir.Value) -> ir.Value | None:
        adds = [n for n in self.consumers(value, "Add") if not any(self.is_const(i) for i in n.inputs)]
        return adds[0].outputs[0] if len(adds) == 1 else None

    def next_layernorm(self, value: ir.Value) -> ir.Value | None:
        norms = self.consumers(value, "LayerNormalization")
        return norms[0].outputs[0] if len(norms) == 1 else None


def _fail(layer: int, expected: str, at: ir.Value | None) -> UsageError:
    where = f"after tensor {at.name!r}" if at is not None else ""
    return UsageError(
        f"layer {layer}: expected {expected} {where}; this graph is not a BERT-style encoder qonnx can map"
    )


def _attention_roles(w: _Walker, softmax: ir.Node, layer: int) -> dict[str, ir.Value]:
    found: dict[str, ir.Value] = {"softmax_input": softmax.inputs[0], "softmax_output": softmax.outputs[0]}
    node = softmax.inputs[0].producer()
    while node is not None and node.op_type != "MatMul":
        node = next((i.producer() for i in node.inputs if i.producer() is not None and not w.is_const(i)), None)
    if node is None:
        raise _fail(layer, "a scores MatMul(q, k) before the Softmax", softmax.inputs[0])
    found["scores"] = node.outputs[0]
    found["query"] = w.skip_layout_back(node.inputs[0])
    found["key"] = w.skip_layout_back(node.inputs[1])
    context = w.consumers(softmax.outputs[0], "MatMul")
    if len(context) != 1:
        raise _fail(layer, "one MatMul(softmax, v)", softmax.outputs[0])
    found["context"] = context[0].outputs[0]
    found["value"] = w.skip_layout_back(context[0].inputs[1])
    found["output"] = w.linear_after(w.skip_layout_forward(found["context"]))
    if found["output"] is None:
        raise _fail(layer, "the attention output dense layer", found["context"])
    found["residual_sum"] = w.residual_add(found["output"])
    found["layernorm"] = found["residual_sum"] and w.next_layernorm(found["residual_sum"])
    if found["layernorm"] is None:
        raise _fail(layer, "residual Add -> LayerNormalization after the attention output", found["output"])
    return found


def _ffn_roles(w: _Walker, ffn_input: ir.Value, layer: int) -> dict[str, ir.Value]:
    found = {"input": ffn_input, "intermediate": w.linear_after(ffn_input)}
    if found["intermediate"] is None:
        raise _fail(layer, "LayerNorm -> MatMul(W1) + b (FFN intermediate dense)", ffn_input)
    acts = [n for n in w.consumers(found["intermediate"]) if n.op_type in ("Gelu", "FastGelu", "Relu")]
    if len(acts) != 1:
        raise _fail(layer, "a Gelu after the FFN intermediate dense (fuse an Erf GELU first)", found["intermediate"])
    found["gelu"] = acts[0].outputs[0]
    found["output"] = w.linear_after(found["gelu"])
    found["residual_sum"] = found["output"] and w.residual_add(found["output"])
    found["layernorm"] = found["residual_sum"] and w.next_layernorm(found["residual_sum"])
    if found["layernorm"] is None:
        raise _fail(layer, "MatMul(W2) + b -> residual Add -> LayerNormalization", found["gelu"])
    return found


def _ordered_softmaxes(graph: ir.Graph) -> list[ir.Node]:
    return [n for n in graph if n.op_type == "Softmax"]


def find_roles(model: onnx.ModelProto | ir.Model) -> RoleMap:
    """Map every role of every layer to its tensor name; a clear error where the graph does not fit."""
    irm = ir.from_proto(model) if isinstance(model, onnx.ModelProto) else model
    w = _Walker(irm.graph)
    softmaxes = _ordered_softmaxes(irm.graph)
    norms = [n for n in irm.graph if n.op_type == "LayerNormalization"]
    if not softmaxes or not norms:
        raise UsageError("no Softmax/LayerNormalization nodes: not a BERT-style encoder export (use `qonnx export`)")
    roles: dict[str, ir.Value] = {"embeddings.sum": norms[0].inputs[0], "embeddings.layernorm": norms[0].outputs[0]}
    for layer, softmax in enumerate(softmaxes):
        att = _attention_roles(w, softmax, layer)
        roles.update({f"layer.{layer}.attention.{k}": att[k] for k in ATTENTION_ROLES})
        ffn = _ffn_roles(w, att["layernorm"], layer)
        roles.update({f"layer.{layer}.ffn.{k}": ffn[k] for k in FFN_ROLES})
    roles.update(_head_roles(irm.graph, roles[f"layer.{len(softmaxes) - 1}.ffn.layernorm"]))
    return RoleMap({k: v.name for k, v in roles.items()}, len(softmaxes))


def _head_roles(graph: ir.Graph, last: ir.Value) -> dict[str, ir.Value]:
    """``output`` is the head's result (a classifier's logits: a dense layer's output). A model
    without a dense head (feature extraction) pools the last hidden state with reductions and
    divisions that no quantizer touches, so its ``output`` is the last hidden state itself."""
    out: dict[str, ir.Value] = {}
    tanh = [n for n in graph if n.op_type == "Tanh"]
    if tanh:
        out["pooler.output"] = tanh[-1].outputs[0]
    dense = [v for v in graph.outputs if v.producer() is not None and v.producer().op_type in ("Gemm", "MatMul", "Add")]
    out["output"] = dense[0] if dense else last if last in graph.outputs else graph.outputs[0]
    return out
