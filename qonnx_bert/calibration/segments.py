"""Run a model as consecutive graph segments that share one copy of the weights.

Calibration exposes hundreds of intermediates; exposing them all in one ONNX Runtime
run holds every one of them at once (BERT-base, 8 x 128 tokens: about 1.3 GB). The
collector therefore cuts the graph, in node order, into segments that each expose a
chunk of the tensors. A batch runs through the segments one after another; the values
that cross a cut (the residual stream, the attention mask, shape values) are carried
to the next segment and dropped when no later segment needs them. Nothing is
recomputed: one pass over the data costs one inference, however many segments.

Weights: ``SplitModel`` keeps the graph without its large initializers plus those
initializers as NumPy arrays. In a segment's graph the weights are graph inputs, fed
with those arrays at every run; ONNX Runtime reads fed CPU arrays in place, so the
weights are held once (``add_external_initializers`` and prepacked MatMul weights
would each add a copy, and building a session from serialized bytes two more).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import numpy_helper

from qonnx_bert.calibration.ranges import model_fingerprint
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.memory import release_freed_memory, trim_heap
from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.graph.shapes import value_infos
from qonnx_bert.graph.weightless import STUB_BYTES, STUB_LOCATION, copy_fields, copy_message, is_stub, weightless


@dataclass
class SplitModel:
    """A model's graph with its large initializers held apart as NumPy arrays.

    ``graph`` is a complete ONNX model whose large initializers are external-data
    stubs; ``weights`` holds their values. ``fingerprint`` is the full model's
    ``model_fingerprint`` (it hashes the weights, so it is taken before the split).
    """

    graph: onnx.ModelProto
    weights: dict[str, np.ndarray]
    fingerprint: str

    @classmethod
    def from_proto(cls, model: onnx.ModelProto) -> SplitModel:
        light = weightless(model)
        originals = {i.name: i for i in model.graph.initializer}
        weights = {s.name: numpy_helper.to_array(originals[s.name]) for s in light.graph.initializer if is_stub(s)}
        return cls(light, weights, model_fingerprint(model))

    @classmethod
    def from_ir(cls, model: ir.Model) -> SplitModel:
        """An IR model split without copying its NumPy-held weights (a rewrite's new tensors); ``model`` is
        left with stubs in their place, to be dropped."""
        weights = {}
        for value in model.graph.initializers.values():
            tensor = value.const_value
            if tensor is not None and tensor.size > STUB_BYTES:
                weights[value.name] = tensor.numpy()  # the array itself for a NumPy-backed tensor
                value.const_value = ir.ExternalTensor(
                    STUB_LOCATION, None, None, tensor.dtype, shape=tensor.shape, name=value.name
                )
        graph = ir.to_proto(model)
        return cls(graph, weights, model_fingerprint(graph, weights))

    def into_proto(self) -> onnx.ModelProto:
        """The whole model: the graph with each stub filled from ``weights``, which are handed over one by one
        (this split is left without them: the model and its arrays are not held twice)."""
        model = onnx.ModelProto()
        model.CopyFrom(self.graph)
        for init in model.graph.initializer:
            if init.name in self.weights:
                init.CopyFrom(numpy_helper.from_array(self.weights.pop(init.name), init.name))
        return model

    @classmethod
    def load(cls, path: str | Path, tokenizer: str | Path | None = None) -> SplitModel:
        """Read an ONNX file in canonical form; the full protobuf is dropped once split (weights held once)."""
        from qonnx_bert.inputs.ingest import load_model

        split = cls.from_proto(load_model(path, tokenizer))
        release_freed_memory()  # the full protobuf, dropped once split
        return split

    def edit_small(self, edit: Callable[[onnx.ModelProto], onnx.ModelProto]) -> SplitModel:
        """The same weights under ``edit(graph)``, where ``edit`` sees only the small initializers.

        For passes such as ``prepare`` that read initializer values: the shared weights
        are left out while ``edit`` runs and put back as stubs after it.
        """
        small = onnx.ModelProto()
        copy_fields(self.graph, small, skip=("graph",))
        copy_fields(self.graph.graph, small.graph, skip=("initializer",))
        for init in self.graph.graph.initializer:
            if init.name not in self.weights:
                copy_message(init, small.graph.initializer.add())
        edited = edit(small)
        stubs = [t for t in self.graph.graph.initializer if t.name in self.weights]
        edited.graph.initializer.extend(stubs)
        return SplitModel(edited, self.weights, self.fingerprint)


def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from its enclosing scope."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(n for n in _node_inputs(node) if n not in defined)
        defined.update(node.output)
    return used


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    """A node's inputs, including the outer-scope names its subgraphs (If, Loop, Scan) read."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            names.extend(sorted(_subgraph_inputs(sub)))
    return names


def _ancestors(nodes: Sequence[onnx.NodeProto], wanted: Iterable[str]) -> list[int]:
    """Indices of the nodes needed to compute ``wanted``, in graph order."""
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    keep, stack = set(), [producer[n] for n in wanted if n in producer]
    while stack:
        i = stack.pop()
        if i not in keep:
            keep.add(i)
            stack.extend(producer[n] for n in _node_inputs(nodes[i]) if n in producer)
    return sorted(keep)


@dataclass(frozen=True)
class Segment:
    """A slice of the graph: what it is fed, what it returns, what the estimators get."""

    nodes: tuple[int, ...]
    inputs: tuple[str, ...]  # fed from the batch or carried from earlier segments
    outputs: tuple[str, ...]  # produced here and exposed or needed later
    exposed: tuple[str, ...]  # this chunk's tensors, wherever they were produced
    keep: frozenset[str]  # values later segments read: everything else is dropped after this one


def plan_segments(model: onnx.ModelProto, chunks: Sequence[Sequence[str]]) -> list[Segment]:
    """Cut ``model``'s nodes so segment ``j`` ends where chunk ``j``'s last tensor is produced."""
    nodes = model.graph.node
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    feeds = {i.name for i in model.graph.input}
    unknown = [n for chunk in chunks for n in chunk if n not in producer and n not in feeds]
    if unknown:
        raise ValueError(f"tensors neither produced by a node nor graph inputs: {unknown[:3]}")
    keep = _ancestors(nodes, [n for chunk in chunks for n in chunk])
    spans, start = [], -1
    for chunk in chunks:
        end = max([start] + [producer[n] for n in chunk if n in producer])
        spans.append((tuple(i for i in keep if start < i <= end), tuple(chunk)))
        start = end
    return _link(nodes, spans, {t.name for t in model.graph.initializer})


def _link(nodes, spans, inits: set[str]) -> list[Segment]:
    """Each span's inputs (read, not made there), outputs (exposed or read later) and carried set."""
    made = [[o for i in idx for o in nodes[i].output] for idx, _ in spans]
    needs = [
        ({n for i in idx for n in _node_inputs(nodes[i])} | set(exposed)) - set(out) - inits
        for (idx, exposed), out in zip(spans, made, strict=True)
    ]
    segments = []
    for j, ((idx, exposed), out) in enumerate(zip(spans, made, strict=True)):
        later = frozenset().union(*needs[j + 1 :])
        outputs = tuple(dict.fromkeys(o for o in out if o in later or o in exposed))
        segments.append(Segment(idx, tuple(sorted(needs[j])), outputs, exposed, later))
    return segments


class Pipeline:
    """ONNX Runtime sessions for consecutive segments, fed ``SplitModel.weights`` in place."""

    def __init__(self, split: SplitModel, chunks: Sequence[Sequence[str]]) -> None:
        model = split.graph
        self.segments = plan_segments(model, chunks)
        types = _value_types(model)
        self.sessions = [
            self._session(model, seg, types, split.weights) if seg.nodes else None for seg in self.segments
        ]
        fed = [[i.name for i in s.get_inputs()] if s else [] for s in self.sessions]
        self._inputs = [[n for n in names if n not in split.weights] for names in fed]
        self._weights = [{n: split.weights[n] for n in names if n in split.weights} for names in fed]

    @staticmethod
    def _session(model: onnx.ModelProto, seg: Segment, types: dict, weights: dict) -> ort.InferenceSession:
        nodes = [model.graph.node[i] for i in seg.nodes]
        used = {n for node in nodes for n in _node_inputs(node)}
        inits = [t for t in model.graph.initializer if t.name in used]
        missing = [n for n in seg.inputs if n in used and n not in types]
        if missing:
            raise UsageError(
                f"cannot cut the graph at tensor {missing[0]}: its type is unknown; run `qonnx export` again"
            )
        inputs = [onnx.helper.make_tensor_value_info(n, types[n], None) for n in seg.inputs if n in used]
        inputs += [onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in inits if t.name in weights]
        graph = onnx.helper.make_graph(
            nodes,
            "segment",
            inputs,
            [onnx.helper.make_empty_tensor_value_info(n) for n in seg.outputs],
            [t for t in inits if t.name not in weights],
        )
        part = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
        part.functions.extend(model.functions)
        # Every tensor as exported; freed activations back to the system; threads idle while NumPy estimates.
        return cpu_session(part, fused=False, arena=False, spinning=False, quiet=True)

    def run(self, feeds: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """Each segment's exposed tensors for one batch, segment by segment."""
        values = dict(feeds)
        for seg, session, names, weights in zip(self.segments, self.sessions, self._inputs, self._weights, strict=True):
            if session is not None:
                trim_heap()  # the previous segment's activations, freed, go back before this one allocates its own
                fed = {**{n: values[n] for n in names}, **weights}
                values.update(
                    zip(seg.outputs, session.run(list(seg.outputs), fed), strict=True)
                )  # no other reference kept
            yield {n: values[n] for n in seg.exposed}
            values = {n: v for n, v in values.items() if n in seg.keep}


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor shape inference can type (segment inputs need one)."""
    return {v.name: v.type.tensor_type.elem_type for v in value_infos(model) if v.type.tensor_type.elem_type}
