"""Lower per-embedding-group (PEG) quantization of one FFN to per-tensor ops.

With a permutation ``P`` that makes every group contiguous and group slices
``G_1..G_K`` of the permuted dimensions, the FFN of a layer

    h = Gelu(x W1 + b1);   y = h W2 + b2;   s = y + x;   LN2(s)

is rewritten, exactly in FP32, as

    x_g = Split(x P)_g                                  (permute, then Split)
    h   = Gelu(sum_g x_g (P^T W1)[G_g, :] + b1)         (K MatMuls, K-1 Adds)
    y_g = h (W2 P)[:, G_g] + (b2 P)[G_g]                (K MatMuls)
    s_g = y_g + x_g                                     (K Adds)
    s   = Concat(s_1..s_K) P^T                          (Concat, then Gather)

so that the FFN input, output and residual sum of each group are separate
tensors, each quantized per-tensor with its own range.

With intermediate groups ``H_1..H_J`` (a partition of the FFN's intermediate
units, contiguous after a permutation ``Q`` folded into W1's columns, b1 and W2's
rows: exact, Gelu acts elementwise), the GELU output is split too:

    h_j = Split(Gelu(... (W1 Q) + b1 Q))_j
    y_g = sum_j h_j (Q^T W2 P)[H_j, G_g] + (b2 P)[G_g]   (K*J MatMuls)

A single intermediate unit can carry a GELU output range several times the other
units' (on MiniLM: the unit that writes the residual stream's outlier
dimension), and its row of W2 then sets the per-tensor weight scale of every
split MatMul; a group of its own gives it its own activation range and weight
scale.

The permutation is skipped when it is the identity, and Split/Concat when K = 1. ``x P`` is
computed as ``LN1(r P; gamma P, beta P)``: the Gather moves in front of the first
LayerNorm (exact, LayerNorm normalizes over the permuted axis), so the FFN input
goes from the LayerNorm straight into the Split. (A Gather between them made
QNN HTP's residual Adds drift far from the CPU provider's, on a uint16 FFN input.) Tensor names
of ``ffn.input``, ``ffn.intermediate`` and ``ffn.residual_sum`` are kept, so
their calibrated ranges still apply. Uses onnx_ir for the graph surgery.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from qonnx_bert.core.errors import UsageError


@dataclass(frozen=True)
class FfnNodes:
    """The nodes of one layer's FFN, found from its role tensors."""

    matmul1: ir.Node
    bias1: ir.Node
    matmul2: ir.Node
    bias2: ir.Node
    residual: ir.Node
    x: ir.Value


def _const(value: ir.Value, layer: int, what: str) -> np.ndarray:
    if value.const_value is None:
        raise UsageError(f"layer {layer}: the FFN {what} is not a constant; cannot split it into groups")
    return value.const_value.numpy()


def find_ffn(graph: ir.Graph, roles: dict[str, str], layer: int) -> FfnNodes:
    """Locate MatMul(W1)+b1 -> ... -> MatMul(W2)+b2 -> residual Add of ``layer``."""
    values = {v.name: v for n in graph for v in n.outputs}
    inter = values[roles[f"layer.{layer}.ffn.intermediate"]].producer()
    out = values[roles[f"layer.{layer}.ffn.output"]].producer()
    residual = values[roles[f"layer.{layer}.ffn.residual_sum"]].producer()
    mm1 = next(
        (i.producer() for i in inter.inputs if i.producer() is not None and i.producer().op_type == "MatMul"), None
    )
    mm2 = next(
        (i.producer() for i in out.inputs if i.producer() is not None and i.producer().op_type == "MatMul"), None
    )
    if mm1 is None or mm2 is None or inter.op_type != "Add" or out.op_type != "Add":
        raise UsageError(
            f"layer {layer}: expected FFN dense layers as MatMul + bias Add (got {inter.op_type}/{out.op_type}); "
            "cannot lower PEG"
        )
    return FfnNodes(mm1, inter, mm2, out, residual, mm1.inputs[0])


def _bias_input(node: ir.Node) -> ir.Value:
    return next(i for i in node.inputs if i.const_value is not None)


class _Builder:
    """Adds constants and nodes before an anchor node, with names under a prefix."""

    def __init__(self, graph: ir.Graph, anchor: ir.Node, prefix: str):
        self.graph, self.anchor, self.prefix = graph, anchor, prefix

    def const(self, name: str, array: np.ndarray) -> ir.Value:
        value = ir.Value(name=f"{self.prefix}.{name}", const_value=ir.tensor(array, name=f"{self.prefix}.{name}"))
        self.graph.register_initializer(value)
        return value

    def node(
        self, op: str, inputs: list, name: str, attributes: dict | None = None, outputs: int = 1
    ) -> list[ir.Value]:
        outs = [ir.Value(name=f"{self.prefix}.{name}" + (f".{i}" if outputs > 1 else "")) for i in range(outputs)]
        attrs = [
            ir.AttrInt64(k, v) if isinstance(v, int) else ir.AttrInt64s(k, v) for k, v in (attributes or {}).items()
        ]
        node = ir.Node("", op, inputs, attrs, outputs=outs, name=f"{self.prefix}.{name}")
        self.graph.insert_before(self.anchor, node)
        return outs


@dataclass(frozen=True)
class SplitResult:
    """Names the quantization plan needs.

    ``group_nodes``: the Split, whose per-group Q/DQ ONNX Runtime's quantizer
    must not unify. ``whole``: the tensors that carry every group at once (the
    FFN input before the Split, the residual sum after the Concat, and their
    permuted copies); quantized on one 8-bit grid they would undo PEG.
    ``partials``: the per-group partial products of a dense layer and their
    running sums: the original graph has one accumulator there, so rounding
    each partial product to 8 bits would add noise PEG does not have.
    ``permuted``: tensors that keep their name but now hold their FP32 values
    permuted along the last axis (``{name: perm}``), for tools that compare them.
    """

    group_nodes: list[str]
    whole: list[str]
    partials: list[str] = field(default_factory=list)
    permuted: dict[str, np.ndarray] = field(default_factory=dict)


def _partition(groups: list[np.ndarray], width: int, layer: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The permutation that makes ``groups`` contiguous, and the group boundaries in it."""
    perm = np.concatenate(groups).astype(np.int64)
    if sorted(perm.tolist()) != list(range(width)):
        raise UsageError(f"layer {layer}: PEG {what} groups must partition the {width} {what} dimensions")
    return perm, np.cumsum([0, *(len(g) for g in groups)])


def split_ffn(
    graph: ir.Graph,
    roles: dict[str, str],
    layer: int,
    groups: list[np.ndarray],
    intermediate: list[np.ndarray] | None = None,
) -> SplitResult:
    """Rewrite ``layer``'s FFN into groups of hidden dimensions (and of intermediate units) in place."""
    ffn = find_ffn(graph, roles, layer)
    w1, w2 = _const(ffn.matmul1.inputs[1], layer, "W1"), _const(ffn.matmul2.inputs[1], layer, "W2")
    perm, cuts = _partition(groups, w1.shape[0], layer, "hidden")
    grouped = len(groups) > 1
    permuted = not np.array_equal(perm, np.arange(len(perm)))
    inner, inner_cuts = _partition(intermediate or [np.arange(w1.shape[1])], w1.shape[1], layer, "intermediate")
    w1, w2 = w1[perm][:, inner], w2[inner][:, perm]
    b2 = _const(_bias_input(ffn.bias2), layer, "b2")[perm]
    if not grouped and not permuted and len(inner_cuts) == 2:
        return SplitResult([], [], [])
    b = _Builder(graph, ffn.matmul1, f"layer{layer}.peg")
    if permuted:
        _permute_layernorm(b, ffn, perm, layer)
    x = ffn.x
    whole = [x] if grouped else []
    xs = b.node("Split", [x, b.const("sizes", np.diff(cuts))], "x", {"axis": -1}, len(groups)) if grouped else [x]
    sum_of = _Accumulator(b)
    acc = sum_of(
        [
            b.node("MatMul", [xg, b.const(f"w1.{g}", w1[cuts[g] : cuts[g + 1]])], f"partial.{g}")[0]
            for g, xg in enumerate(xs)
        ],
        "partial_sum",
    )
    ffn.bias1.replace_input_with(list(ffn.bias1.inputs).index(ffn.matmul1.outputs[0]), acc)
    moved = {ffn.x.name: perm} if permuted else {}
    if len(inner_cuts) > 2:
        moved |= {ffn.bias1.outputs[0].name: inner, ffn.matmul2.inputs[0].name: inner}
        b1 = _bias_input(ffn.bias1)
        ffn.bias1.replace_input_with(list(ffn.bias1.inputs).index(b1), b.const("b1", _const(b1, layer, "b1")[inner]))
    b.anchor = ffn.residual
    h = ffn.matmul2.inputs[0]
    hs = (
        b.node("Split", [h, b.const("h_sizes", np.diff(inner_cuts))], "h", {"axis": -1}, len(inner_cuts) - 1)
        if len(inner_cuts) > 2
        else [h]
    )
    sums = []
    for g, xg in enumerate(xs):
        tags = [f"{g}" if len(hs) == 1 else f"{g}.{j}" for j in range(len(hs))]
        yg = sum_of(
            [
                b.node(
                    "MatMul",
                    [hj, b.const(f"w2.{tag}", w2[inner_cuts[j] : inner_cuts[j + 1], cuts[g] : cuts[g + 1]])],
                    f"out_matmul.{tag}",
                )[0]
                for j, (hj, tag) in enumerate(zip(hs, tags))
            ],
            f"out_partial_sum.{g}",
        )
        yg = b.node("Add", [yg, b.const(f"b2.{g}", b2[cuts[g] : cuts[g + 1]])], f"output.{g}")[0]
        sums.append(b.node("Add", [yg, xg], f"residual_sum.{g}")[0])
    s = b.node("Concat", sums, "residual_sum_permuted", {"axis": -1})[0] if grouped else sums[0]
    whole += [s] if grouped else []
    if permuted:
        s = b.node(
            "Gather",
            [s, b.const("inverse_perm", np.argsort(perm).astype(np.int64))],
            "residual_sum_unpermuted",
            {"axis": -1},
        )[0]
        whole += [s] if grouped else []
    _replace(graph, ffn, s)
    whole += [h] if len(hs) > 1 else []
    split = [f"layer{layer}.peg.{t}" for t, parts in (("x", xs), ("h", hs)) if len(parts) > 1]
    if not split:  # a permutation alone: no group tensors, nothing to keep apart
        return SplitResult([], [], permuted=moved)
    return SplitResult(split, [v.name for v in whole], sum_of.partials, moved)


class _Accumulator:
    """Sums partial products with a chain of Adds, recording the summands."""

    def __init__(self, b: _Builder):
        self.b, self.partials = b, []

    def __call__(self, parts: list[ir.Value], name: str) -> ir.Value:
        acc = parts[0]
        for j, part in enumerate(parts[1:], 1):
            self.partials += [acc.name, part.name]
            acc = self.b.node("Add", [acc, part], f"{name}.{j}")[0]
        return acc


def _permute_layernorm(b: _Builder, ffn: FfnNodes, perm: np.ndarray, layer: int) -> None:
    """Make the first LayerNorm output ``x P``: permute its input and its gamma and beta."""
    ln = ffn.x.producer()
    axis = ln.attributes.get("axis") if ln is not None else None
    readers = {use.node for use in ffn.x.uses()}
    if (
        ln is None
        or ln.op_type != "LayerNormalization"
        or len(ln.inputs) != 3
        or (axis is not None and axis.value != -1)
        or readers != {ffn.matmul1, ffn.residual}
    ):
        raise UsageError(
            f"layer {layer}: the FFN input is not a LayerNorm output read only by the FFN; "
            "use `permutation=model` or `permutation=none`"
        )
    gamma, beta = (_const(v, layer, what) for v, what in zip(ln.inputs[1:3], ("LayerNorm gamma", "LayerNorm beta")))
    before_ln = _Builder(b.graph, ln, b.prefix)
    stream = before_ln.node("Gather", [ln.inputs[0], before_ln.const("perm", perm)], "ln_input_permuted", {"axis": -1})[
        0
    ]
    ln.replace_input_with(0, stream)
    ln.replace_input_with(1, before_ln.const("ln_gamma_permuted", gamma[perm]))
    ln.replace_input_with(2, before_ln.const("ln_beta_permuted", beta[perm]))


def _replace(graph: ir.Graph, ffn: FfnNodes, s: ir.Value) -> None:
    """Route the residual sum's consumers to ``s`` (keeping its name) and drop the old nodes."""
    old = ffn.residual.outputs[0]
    name = old.name
    old.replace_all_uses_with(s)
    if old.is_graph_output():
        graph.outputs[graph.outputs.index(old)] = s
    removed = (ffn.residual, ffn.bias2, ffn.matmul2, ffn.matmul1)
    constants = [v for node in removed for v in node.inputs if v is not None and v.is_initializer()]
    for node in removed:
        graph.remove(node, safe=True)
    s.name = name
    for value in constants:  # the old W1/W2 go now, not after every layer is split (ALBERT's shared ones stay)
        if not value.uses() and not value.is_graph_input() and value.name in graph.initializers:
            graph.initializers.pop(value.name)
