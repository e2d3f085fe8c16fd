"""A QDQ ONNX model as a trainable PyTorch module: the deployed graph, node for node.

Training on the QDQ graph itself (rather than on the Hugging Face modules with hooks) puts
fake quantization at exactly the tensors, bit-widths and zero points the scheme deployed,
with the same operator order, by construction: every ``QuantizeLinear`` is one, and roles
need no mapping. What is learned:

* the FP32 weights behind each weight ``DequantizeLinear`` (linear layers and the word
  embedding table; under PEG each reads a permuted, split gather of one, ``weight_views``):
  fake-quantized symmetric on the grid the scheme or ``LowBitConfig`` writes, scales
  recomputed from the weights (min-max at 8 bits, MSE below) by ``refresh_weight_scales``
  (each epoch, and before export);
* the range of each ranges-file tensor that sets the scale of one or more quantizers in the
  deployed graph (``LearnedRange``), one per such tensor: ``sources`` says which tensor sets
  which quantizer (``qat.range_sources``), because the writer ties some (a Transpose or
  Reshape output takes its input's range) and fixes others, so the model the learned ranges
  deploy is the model that was trained.

A Gather output's quantizer follows its table's current min-max, and an int32 LayerNorm bias
the grid of its current input scale (the writer derives both from what training changed).
Everything else (biases, LayerNorm parameters, position and type embeddings, quantizers set
by fixed rules such as the softmax output's, ranges the writer re-estimates: ``follow_writer``)
runs with the deployed integers and scales.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from qonnx_bert.calibration.ranges import RangeTable
from qonnx_bert.calibration.weight_grid import Granularity, WeightGrid, layout, weight_scale
from qonnx_bert.graph.qdq import GRAPH_OUTPUT_SUFFIX
from qonnx_bert.passes.lowbit_weights import weight_sites
from qonnx_bert.quantize.lowbit import LowBitConfig
from qonnx_bert.training.fake_quant import (
    LearnedRange,
    asymmetric_scale_zero_point,
    dequantize,
    fake_quantize,
    quantize,
    symmetric_weight,
)
from qonnx_bert.training.onnx_ops import OPS, attr
from qonnx_bert.training.weight_views import View

SCHEME_WEIGHTS = WeightGrid(8, Granularity.PER_TENSOR)  # what every scheme writes: int8 symmetric per-tensor
_UNSIGNED = (onnx.TensorProto.UINT8, onnx.TensorProto.UINT16)


def _tensor(init: onnx.TensorProto) -> torch.Tensor:
    value = numpy_helper.to_array(init)
    if value.dtype.kind not in "fbiu" or value.dtype.itemsize == 0:
        value = value.astype(np.int8)  # int4 / int2
    return torch.from_numpy(np.array(value))


def _moved(value, fn):
    """``value`` (a tensor, or a tuple holding tensors, names and None) with ``fn`` applied to its tensors."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    return tuple(_moved(v, fn) for v in value) if isinstance(value, tuple) else value


def _key(name: str) -> str:
    return name.replace(".", "__")


def _int32_biases(nodes: list, inits: dict, floats: onnx.ModelProto, sites: set) -> dict:
    """Each int32 bias whose weight is not learned (LayerNorm's beta: ``gamma`` is fixed) -> (float bias,
    input scale initializer, weight scale initializer). ONNX Runtime derives its grid from the input's
    scale, which QAT learns, so the grid the graph was built with goes stale. Biases of learned weights
    are not re-derived."""
    producer = {o: n for n in nodes for o in n.output}
    float_inits = {i.name: i for i in floats.graph.initializer}
    out = {}
    for node in nodes:
        parts = [producer.get(i) for i in node.input[:3]]
        if len(parts) < 3 or any(p is None or p.op_type != "DequantizeLinear" for p in parts):
            continue
        x, w, b = parts
        q = inits.get(b.input[0])
        if q is None or q.data_type != onnx.TensorProto.INT32 or w.output[0] in sites or b.output[0] not in float_inits:
            continue
        bias = torch.from_numpy(numpy_helper.to_array(float_inits[b.output[0]]).astype(np.float64))
        out[b.output[0]] = (bias, x.input[1], w.input[1])
    return out


class QdqModule(torch.nn.Module):
    def __init__(
        self,
        qdq: onnx.ModelProto,
        floats: onnx.ModelProto,
        ranges: RangeTable,
        lowbit: LowBitConfig,
        sources: dict[str, str],
        views: dict[str, View] | None = None,
        bases: dict[str, np.ndarray] | None = None,
    ) -> None:
        """``views`` and ``bases``: the FP32 weights each weight of ``floats`` gathers (``weight_views``), and their
        values; None: ``floats`` holds the FP32 weights as they are (every scheme but PEG)."""
        super().__init__()
        self.nodes = list(qdq.graph.node)
        self.output = qdq.graph.output[0].name
        # A QuantizeLinear read by one DequantizeLinear on its own scale and zero point runs as one fake quantizer
        # (``fake_quantize``: the same values and gradients, a third of the memory kept for backward).
        readers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        self.pair_of = {
            q.output[0]: only[0].output[0]
            for q in self.nodes
            if q.op_type == "QuantizeLinear"
            and len(only := readers.get(q.output[0], [])) == 1
            and only[0].op_type == "DequantizeLinear"
            and list(only[0].input[1:]) == list(q.input[1:])
            and q.output[0] != self.output
        }
        self.paired = set(self.pair_of.values())
        # Each tensor is dropped after the last node reading it: holding every one to the end (a whole
        # PEG graph's at the dev batch) took over 24 GB on MiniLM. Autograd keeps what backward needs.
        last_use = {name: i for i, node in enumerate(self.nodes) for name in node.input if name}
        self.done_after: list[list[str]] = [[] for _ in self.nodes]
        for name, i in last_use.items():
            if name != self.output:
                self.done_after[i].append(name)
        self.sites = {s.tensor: s for s in weight_sites(qdq, floats)}
        self.grids = {t: lowbit.grid(s) or SCHEME_WEIGHTS for t, s in self.sites.items()}
        inits = {i.name: i for i in qdq.graph.initializer}
        # ONNX Runtime gives a Gather's table the activation type: uint8 asymmetric min-max, not int8 symmetric.
        self.asymmetric = {
            n.output[0]
            for n in qdq.graph.node
            if n.op_type == "DequantizeLinear"
            and n.output[0] in self.sites
            and inits[n.input[0]].data_type in _UNSIGNED
        }
        if views is None:
            views, bases = (
                {s.name: (s.name, None) for s in self.sites.values()},
                {s.name: s.values for s in self.sites.values()},
            )
        self.views = {
            t: (views[s.name][0], None if views[s.name][1] is None else torch.from_numpy(views[s.name][1]))
            for t, s in self.sites.items()
        }
        # What is trained: the FP32 weights (a checkpoint's parameters), each site a view of one.
        self.weights = torch.nn.ParameterDict(
            {
                _key(src): torch.nn.Parameter(torch.from_numpy(np.array(bases[src], np.float32)))
                for src, _ in self.views.values()
            }
        )
        self.constants = {name: _tensor(init) for name, init in inits.items()}
        # ONNX Runtime quantizes a Gather's output with its table's own uint8 min-max scale initializer (kept
        # when the table is lowered below 8 bits); the writer recomputes it from the trained table, so it
        # follows the table here too, not the constant the graph was built with.
        gathered = {n.output[0]: n.input[0] for n in self.nodes if n.op_type == "Gather" and n.input[0] in self.sites}
        self.table_of = {
            n.input[1]: gathered[n.input[0]]
            for n in self.nodes
            if n.op_type == "QuantizeLinear" and n.input[0] in gathered
        }
        self.biases = _int32_biases(self.nodes, inits, floats, set(self.sites))
        self.ranges = torch.nn.ModuleDict()  # _key(source tensor) -> its learned range
        self.source_of: dict[str, tuple[str, int]] = {}  # scale initializer -> (ranges-file tensor, its grid's qmax)
        for node in self.nodes:
            if node.op_type == "QuantizeLinear":
                self._learn(node, inits, ranges, sources)
        self.scales: dict = {}  # weight tensor -> full-shape scale, or (scale, zero point) of an asymmetric table
        self.gather_scales: dict = {}  # scale initializer in table_of -> (scale, zero point) of the table now
        self.refresh_weight_scales()

    def _learn(self, node: onnx.NodeProto, inits: dict, ranges: RangeTable, sources: dict[str, str]) -> None:
        """Make ``node``'s scale learnable if a ranges-file tensor sets it, as deployed (not overridden)."""
        source = sources.get(node.input[0].removesuffix(GRAPH_OUTPUT_SUFFIX))
        zp = inits.get(node.input[2]) if len(node.input) > 2 else None
        if source is None or zp is None or zp.data_type not in _UNSIGNED:
            return
        learned = self.ranges[_key(source)] if _key(source) in self.ranges else LearnedRange(*ranges.range(source))
        qmax = 65535 if zp.data_type == onnx.TensorProto.UINT16 else 255  # a mixed-precision convert: the other grid
        scale, zero_point = learned.scale_zero_point(qmax)
        deployed = numpy_helper.to_array(inits[node.input[1]])
        if float(scale.detach()) == float(deployed) and int(zero_point) == int(numpy_helper.to_array(zp)):
            self.ranges[_key(source)] = learned
            self.source_of[node.input[1]] = (source, qmax)

    @property
    def device(self) -> torch.device:
        return next(iter(self.weights.values())).device

    def _apply(self, fn, recurse=True):
        """``module.to(device)`` moves every tensor the module holds: the graph's constants and the scales,
        indices and biases derived from it live in plain dicts (keyed by ONNX names), not in buffers."""
        super()._apply(fn, recurse)
        for name in ("constants", "views", "scales", "gather_scales", "biases"):
            setattr(self, name, {key: _moved(value, fn) for key, value in getattr(self, name).items()})
        return self

    def _on_device(self, value):
        return _moved(value, lambda t: t.to(self.device))

    def parameter(self, source: str) -> torch.nn.Parameter:
        """The trained FP32 weight ``source`` (an initializer name of the FP32 model)."""
        return self.weights[_key(source)]

    def weight(self, tensor: str) -> torch.Tensor:
        """The float weight the site ``tensor`` reads: its FP32 weight, gathered as the scheme gathers it."""
        source, index = self.views[tensor]
        w = self.parameter(source)
        return w if index is None else w.reshape(-1)[index].reshape(self.sites[tensor].values.shape)

    def refresh_weight_scales(self) -> None:
        """Weight scales from the current weights, as the deploying writer computes them."""
        for tensor, site in self.sites.items():
            w, grid = self.weight(tensor).detach().cpu().numpy(), self.grids[tensor]
            if tensor in self.asymmetric:
                self.scales[tensor] = self._on_device(asymmetric_scale_zero_point(float(w.min()), float(w.max()), 255))
                continue
            q = layout(
                w, np.zeros(w.shape, np.int64), weight_scale(w, grid, site.channel_axis), grid, site.channel_axis
            )
            self.scales[tensor] = self._on_device(torch.from_numpy(np.ascontiguousarray(q.full_scale(), np.float32)))
        for name, table in self.table_of.items():
            w = self.weight(table).detach()
            self.gather_scales[name] = self._on_device(asymmetric_scale_zero_point(float(w.min()), float(w.max()), 255))

    def follow_writer(self, written: onnx.ModelProto) -> None:
        """Take every constant the writer derives from the trained model from ``written``, the graph it writes
        now (``mp`` re-estimates the output's range on the trained weights; Gemm int32 biases follow their
        weights' scales): training steps keep them fixed, so this runs after each epoch, before the dev run."""
        if [n.op_type for n in written.graph.node] != [n.op_type for n in self.nodes]:
            raise RuntimeError("the writer wrote another graph for the trained model; report this model")
        for init in written.graph.initializer:
            if init.name in self.constants:
                self.constants[init.name] = self._on_device(_tensor(init))

    def learned_ranges(self) -> dict[str, tuple[float, float]]:
        return {source: self.ranges[_key(source)].range() for source, _ in self.source_of.values()}

    def _learned(self, scale_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        source, qmax = self.source_of[scale_name]
        return self.ranges[_key(source)].scale_zero_point(qmax)

    def learned_weights(self) -> dict[str, np.ndarray]:
        """The trained FP32 weights, by initializer name."""
        return {source: self.parameter(source).detach().cpu().numpy().copy() for source, _ in self.views.values()}

    def _scale_zp(self, node: onnx.NodeProto, values: dict) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        zp_name = node.input[2] if len(node.input) > 2 else ""
        dtype = self.constants[zp_name].dtype if zp_name else torch.uint8
        if node.input[1] in self.source_of:
            scale, zero_point = self._learned(node.input[1])
        elif node.input[1] in self.gather_scales:
            scale, zero_point = self.gather_scales[node.input[1]]
        else:
            scale = values[node.input[1]]
            zero_point = values[zp_name].float() if zp_name else torch.zeros(())
        axis = attr(node, "axis", 1)
        if scale.dim() == 1 and values[node.input[0]].dim() > 1:  # per-axis: broadcast along ``axis``
            shape = [1] * values[node.input[0]].dim()
            shape[axis] = -1
            scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
        info = torch.iinfo(dtype)
        return scale, zero_point, info.min, info.max

    def _activation_scale(self, scale_name: str, values: dict) -> torch.Tensor:
        if scale_name in self.source_of:
            return self._learned(scale_name)[0].detach()
        return values[scale_name]

    def _bias(self, name: str, values: dict) -> torch.Tensor:
        """ONNX Runtime's int32 bias, re-derived from the current input scale as the writer does:
        ``round(b / (input scale * weight scale))`` (float32 product, float64 division, ties to even)."""
        bias, input_scale_name, weight_scale_name = self.biases[name]
        scale = self._activation_scale(input_scale_name, values) * values[weight_scale_name]
        q = torch.clamp(torch.round(bias / scale.double()), -(2**31), 2**31 - 1)
        return dequantize(q.float(), scale, torch.zeros(()))

    def forward(self, **feeds: torch.Tensor) -> torch.Tensor:
        values = {**self.constants, **feeds}
        if self.device.type == "cpu":  # factories already make CPU tensors: no device mode on every torch call
            return self._run(values)
        with torch.device(self.device):  # tensors the ONNX ops create (Shape, Range, ...) on the module's device
            return self._run(values)

    def _run(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        for node, done in zip(self.nodes, self.done_after):
            if node.op_type == "DequantizeLinear" and node.output[0] in self.biases:
                values[node.output[0]] = self._bias(node.output[0], values)
            elif node.op_type == "DequantizeLinear" and node.output[0] in self.sites:
                tensor = node.output[0]
                w, scale = self.weight(tensor), self.scales[tensor]
                if tensor in self.asymmetric:
                    values[tensor] = dequantize(quantize(w, *scale, 0, 255), *scale)
                else:
                    values[tensor] = symmetric_weight(w, scale, self.grids[tensor].qmax)
            elif node.output[0] in self.paired:
                pass  # computed with its QuantizeLinear
            elif node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                scale, zero_point, qmin, qmax = self._scale_zp(node, values)
                x = values[node.input[0]]
                if node.output[0] in self.pair_of:
                    values[self.pair_of[node.output[0]]] = fake_quantize(x, scale, zero_point, qmin, qmax)
                elif node.op_type == "QuantizeLinear":
                    values[node.output[0]] = quantize(x, scale, zero_point, qmin, qmax)
                else:
                    values[node.output[0]] = dequantize(x.float(), scale, zero_point)
            else:
                out = OPS[node.op_type](node, *(values[i] if i else None for i in node.input))
                values.update(zip(node.output, out) if isinstance(out, tuple) else [(node.output[0], out)])
            for name in done:
                values.pop(name, None)  # a paired QuantizeLinear's output never exists
        return values[self.output]
