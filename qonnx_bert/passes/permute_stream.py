"""Permute the residual stream of a whole encoder, folded into its weights.

PEG needs each group of embedding dimensions contiguous so a Split can cut it out. The
paper permutes per layer, which costs a Gather before and after every FFN at run time.
One permutation ``P`` of the hidden dimensions for the whole model costs nothing: every
op on the residual stream either mixes dimensions through a constant or treats them
alike, so (``x' = x[..., P]``, exact in FP32)::

    Gather(E, ids)[..., P]   = Gather(E[:, P], ids)            embedding tables
    (a W + b)[..., P]        = a W[:, P] + b[P]                 a dense layer writing the stream
    x' W[P, :]               = x W                              a dense layer reading the stream
    LN(x)[..., P]            = LN_{gamma[P], beta[P]}(x')       LayerNorm over the hidden axis
    (x + y)[..., P]          = x' + y'                          residual Adds
    Gather(x, i, axis != -1) = the [CLS] token, still permuted  the pooler's input
    Shape(x')                = Shape(x)                         TorchScript's dynamic reshapes
    x = Gather(x', P^-1, axis=-1)                              a graph output (feature extraction's
                                                               last hidden state): one Gather restores it

Starting at the first LayerNorm's output (the embeddings), the stream is followed forward
through its consumers; producers of values joining it (attention outputs, embedding sums)
are permuted backward. Every constant touched is copied, never edited in place: the
exporter shares identical initializers between unrelated nodes. A graph output on the
stream where the stream ends (feature extraction's last hidden state) keeps its name and
order (its readers, e.g. mean pooling, move with it); the permuted value before the
restoring Gather is renamed ``<name>.permuted``. Anything else on the stream (a graph
output that later layers read, an op that mixes positions of the hidden axis) is refused
with the node named, and the graph is then left as it was.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qonnx_bert.core.errors import UsageError
from qonnx_bert.graph.ops import ARITHMETIC_OPS

_STREAM_READERS = {"MatMul", "Gemm", "LayerNormalization"}  # a graph output read by these is mid-stream


class _Folder:
    def __init__(self, graph: ir.Graph, perm: np.ndarray) -> None:
        self.graph, self.perm, self.hidden = graph, perm, len(perm)
        self.permuted: dict[int, ir.Value] = {}  # values now in permuted order, by id
        self.done: set[int] = set()  # ids of nodes handled
        self.copies: dict[tuple[str, str], ir.Value] = {}
        self.edits: list[tuple[ir.Node, int, ir.Value]] = []  # applied only if the whole fold succeeds
        self.outputs: list[ir.Value] = []  # permuted graph outputs, restored by a Gather in apply()

    def refuse(self, node: ir.Node, why: str) -> UsageError:
        return UsageError(
            f"cannot fold the PEG permutation into the weights at {node.op_type} node {node.name!r}: {why}; "
            "use `permutation=layer`"
        )

    def constant(self, node: ir.Node, index: int, how: str) -> None:
        """Replace input ``index`` of ``node`` by a permuted copy (``how``: rows, columns, vector)."""
        value = node.inputs[index]
        array = value.const_value.numpy()
        if how == "vector" and (array.ndim == 0 or array.shape[-1] == 1):
            return  # a scalar or broadcast constant is the same for every dimension
        if (array.shape[0] if how == "rows" else array.shape[-1]) != self.hidden:
            raise self.refuse(
                node,
                f"constant {value.name!r} of shape {list(array.shape)} does not span the {self.hidden} "
                "hidden dimensions",
            )
        key = (value.name, how)
        if key not in self.copies:
            moved = array[self.perm] if how == "rows" else array[..., self.perm]
            name = f"{value.name}.permuted_{how}"
            self.copies[key] = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(moved), name=name))
        self.edits.append((node, index, self.copies[key]))

    def backward(self, value: ir.Value) -> None:
        """Make ``value`` permuted by permuting what produces it."""
        if id(value) in self.permuted:
            return
        node = value.producer()
        if node is None:
            raise UsageError(
                f"cannot fold the PEG permutation into the weights: {value.name!r} joins the residual stream "
                "from outside the graph; use `permutation=layer`"
            )
        self.permuted[id(value)] = value
        self.done.add(id(node))
        if node.op_type in ARITHMETIC_OPS:
            for i, x in enumerate(node.inputs):
                self.constant(node, i, "vector") if x.const_value is not None else self.backward(x)
        elif node.op_type == "MatMul" and node.inputs[1].const_value is not None:
            self.constant(node, 1, "columns")
        elif node.op_type == "Gather" and node.inputs[0].const_value is not None and _axis(node) == 0:
            self.constant(node, 0, "columns")
        elif node.op_type == "LayerNormalization" and _axis(node) in (-1, _rank(node) - 1):
            self._layernorm(node)
            self.backward(node.inputs[0])
        else:
            raise self.refuse(node, "its output joins the residual stream and mixes or reorders hidden dimensions")

    def forward(self, value: ir.Value) -> None:
        """``value`` is permuted: adapt every consumer."""
        self.permuted[id(value)] = value
        if value.is_graph_output():
            if any(n.op_type in _STREAM_READERS for n in value.consumers()):
                raise UsageError(
                    "cannot fold the PEG permutation into the weights: the residual stream "
                    f"{value.name!r} is a graph output; use `permutation=layer`"
                )
            self.outputs.append(value)  # the stream ends here: its readers (pooling) move to the restored output
            return
        for node in value.consumers():
            if id(node) in self.done:
                continue
            self.done.add(id(node))
            self._consumer(node, value)

    def _consumer(self, node: ir.Node, value: ir.Value) -> None:
        op = node.op_type
        if op == "MatMul" and node.inputs[0] is value and node.inputs[1].const_value is not None:
            self.constant(node, 1, "rows")
        elif (
            op == "Gemm"
            and node.inputs[0] is value
            and node.inputs[1].const_value is not None
            and not _attr(node, "transA", 0)
        ):
            self.constant(node, 1, "columns" if _attr(node, "transB", 0) else "rows")
        elif op == "LayerNormalization" and _axis(node) in (-1, _rank(node) - 1):
            self._layernorm(node)
            self.forward(node.outputs[0])
        elif op in ("Add", "Sub"):
            for x in node.inputs:
                if x is not value:
                    self.backward(x) if x.const_value is None else self.constant(
                        node, list(node.inputs).index(x), "vector"
                    )
            self.forward(node.outputs[0])
        elif op == "Gather" and node.inputs[0] is value and _axis(node) not in (-1, _rank(node) - 1):
            self.forward(node.outputs[0])
        elif op == "Shape":
            return  # sizes only (TorchScript's dynamic reshapes read them): the order does not matter
        else:
            raise self.refuse(
                node, "it reads the residual stream in a way that depends on the order of hidden dimensions"
            )

    def _layernorm(self, node: ir.Node) -> None:
        for i in (1, 2):
            if len(node.inputs) > i and node.inputs[i] is not None:
                if node.inputs[i].const_value is None:
                    raise self.refuse(node, "its scale or bias is not a constant")
                self.constant(node, i, "vector")

    def apply(self) -> None:
        for value in self.copies.values():
            self.graph.register_initializer(value)
        for node, index, value in self.edits:
            node.replace_input_with(index, value)
        for value in self.outputs:
            self._restore_output(value)

    def _restore_output(self, value: ir.Value) -> None:
        """``value`` (a graph output) becomes ``Gather(value', P^-1, axis=-1)``, under its own name."""
        name = value.name
        indices = ir.Value(name=f"{name}.inverse_permutation", const_value=ir.tensor(np.argsort(self.perm)))
        self.graph.register_initializer(indices)
        value.name = f"{name}.permuted"
        gather = ir.Node("", "Gather", [value, indices], attributes=[ir.AttrInt64("axis", -1)], name=f"{name}.restore")
        restored = gather.outputs[0]
        restored.name, restored.shape, restored.type = name, value.shape, value.type
        value.replace_all_uses_with(restored, replace_graph_outputs=True)
        gather.replace_input_with(0, value)  # replace_all_uses_with moved the Gather's own input too
        self.graph.insert_after(value.producer(), gather)


def _attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _axis(node: ir.Node) -> int:
    return _attr(node, "axis", -1 if node.op_type == "LayerNormalization" else 0)


def _rank(node: ir.Node) -> int:
    shape = node.inputs[0].shape
    return len(shape) if shape is not None else 3  # exported encoders: (batch, sequence, hidden)


def permute_stream(graph: ir.Graph, embeddings_output: ir.Value, perm: np.ndarray) -> list[str]:
    """Fold ``x -> x[..., perm]`` of the residual stream from ``embeddings_output`` on, in place.

    ``embeddings_output`` is the embedding LayerNorm's output, where the stream starts.
    Returns the names of the tensors that now hold ``x[..., perm]`` of their FP32 values.
    """
    perm = np.asarray(perm, np.int64)
    if sorted(perm.tolist()) != list(range(len(perm))):
        raise ValueError("perm must be a permutation of 0..hidden-1")
    folder = _Folder(graph, perm)
    folder.backward(embeddings_output)
    folder.forward(embeddings_output)
    folder.apply()
    return [v.name for v in folder.permuted.values()]
