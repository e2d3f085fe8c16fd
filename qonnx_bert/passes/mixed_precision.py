"""Keep chosen activations in 16 bits inside a uint8 QDQ model, with legal 8<->16 requantization.

A tensor "in 16 bits" is quantized to uint16 *and read as uint16 by every
consumer*: converting it down for its consumers would round it to 8 bits
anyway. Integer runtimes (QNN HTP) want every op to see inputs and outputs of
one type, so the ops on both sides of a 16-bit tensor run in 16 bits too: the
producer's other inputs are requantized up (DQ -> Q uint16), and the
consumer's output is quantized to uint16 and requantized down (DQ -> Q uint8)
for 8-bit readers. A tensor between two 16-bit ops stays 16-bit (down and up
again would only add error).

That is exactly what ONNX Runtime's ``MixedPrecisionTensorQuantOverridesFixer``
(from its QNN helpers) computes as ``TensorQuantOverrides`` with ``convert``
entries, so it is reused: verified on our exports (fused Gelu and
LayerNormalization, opset 21, every node named), where no op is left with
mixed uint8/uint16 activations (``tests/quantize/test_mixed_precision.py``). Two things
it does not know are added here: which tensors carry the same values as a
chosen one (``value_group``), and how many tensors end up 16-bit
(``wide_tensors``). ONNX Runtime's own override validation stops at the first
entry, so callers pass only tensors the quantizer quantizes.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from collections import defaultdict
from collections.abc import Iterable
from functools import cache

import numpy as np
import onnx
import onnxruntime.quantization
from onnx import numpy_helper
from onnxruntime.quantization import QuantType
from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType
from onnxruntime.quantization.tensor_quant_overrides import TensorQuantOverridesHelper

from qonnx_bert.graph.ops import LAYOUT_OPS
from qonnx_bert.graph.qdq import quantizer_of
from qonnx_bert.graph.weightless import weightless

ACTIVATION_TYPE = QuantType.QUInt8
WIDE_TYPE = QuantType.QUInt16
_FIXER_MODULE = "onnxruntime.quantization.execution_providers.qnn.mixed_precision_overrides_utils"


@cache
def _fixer_class() -> type:
    """ORT's ``MixedPrecisionTensorQuantOverridesFixer``, loaded without running its package's ``__init__``.

    That package (ORT's QNN helpers) imports ``onnxruntime.tools``, which imports all of torch
    when torch is installed, so every ``qonnx quantize`` would carry torch's memory for one
    pure-Python module that itself needs only ``onnxruntime.quantization``.
    """
    module = sys.modules.get(_FIXER_MODULE)
    if module is None:
        where = onnxruntime.quantization.__path__[0] + "/execution_providers/qnn/mixed_precision_overrides_utils.py"
        spec = importlib.util.spec_from_file_location(_FIXER_MODULE, where)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_FIXER_MODULE] = module
        spec.loader.exec_module(module)
    return module.MixedPrecisionTensorQuantOverridesFixer


def int16_overrides(
    model: onnx.ModelProto,
    tensors: Iterable[str],
    base: dict[str, list[dict]] | None = None,
    ranges: dict[str, tuple[float, float]] | None = None,
    readers: Iterable[str] = (),
) -> dict[str, list[dict]]:
    """``TensorQuantOverrides`` that keep ``tensors`` in uint16 and requantize at every 8/16 boundary.

    ``base`` holds the scheme's own overrides (kept); ``ranges`` optionally
    gives a 16-bit tensor its own (min, max) instead of the calibrated one.
    ONNX Runtime reads ``rmin``/``rmax`` as NumPy scalars (a Python float
    crashes its quantizer), hence ``np.float32``. ``readers`` are 16-bit nodes
    whose first input must still be rounded to its uint8 grid: they get the
    uint8 convert here and ``widen_exactly`` copies it to uint16 after quantization.
    """
    requests = copy.deepcopy(base or {})
    for name in tensors:
        entry = requests.setdefault(name, [{}])[0]
        entry["quant_type"] = WIDE_TYPE
        if ranges and name in ranges:
            entry["rmin"], entry["rmax"] = (np.float32(v) for v in ranges[name])
    helper = TensorQuantOverridesHelper(requests)
    # ORT's fixer infers shapes on what it is given and reads initializers' names and dims only
    fixer = _fixer_class().create_from_model(helper, weightless(model), ACTIVATION_TYPE)
    fixer.apply(ACTIVATION_TYPE, default_activation_symmetric=False)
    fixed = helper.get_dict()
    first_inputs = {n.name: n.input[0] for n in model.graph.node}
    for node in readers:
        _read_in_uint8(fixed.setdefault(first_inputs[node], [{}])[0], node)
    return fixed


def _read_in_uint8(entry: dict, reader: str) -> None:
    """Make ``reader`` see the tensor of override ``entry`` on its uint8 grid."""
    convert = entry.get("convert")
    if entry.get("quant_type") == WIDE_TYPE:
        if convert is None:
            entry["convert"] = convert = {"quant_type": ACTIVATION_TYPE, "recv_nodes": set()}
        convert["recv_nodes"].add(reader)
    elif convert is not None:
        convert["recv_nodes"].discard(reader)


def widen_exactly(model: onnx.ModelProto, readers: Iterable[str]) -> None:
    """Feed each node of ``readers`` its uint8 first input through an exact uint16 copy, in place.

    A 16-bit op (HTP wants one type per op) reading values that must stay on their
    uint8 grid: DQ(uint8) -> Q(uint16) -> DQ(uint16) with the scale / 257 and the zero
    point * 257 puts every uint8 step on a uint16 step (65535 = 255 * 257): nothing is
    rounded again. ORT's converts cannot chain (uint16 -> uint8 -> uint16), hence this pass.
    """
    wanted = set(readers)
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    nodes = []
    for node in model.graph.node:
        if node.name in wanted:
            dq = producers.get(node.input[0])
            zero = (
                numpy_helper.to_array(inits[dq.input[2]])
                if dq is not None and dq.op_type == "DequantizeLinear"
                else None
            )
            if zero is None or zero.dtype != np.uint8:
                raise ValueError(f"node {node.name!r} does not read a uint8 DequantizeLinear output")
            stem = f"{node.name}_input_uint16"
            scale = numpy_helper.to_array(inits[dq.input[1]]) / np.float32(257)
            model.graph.initializer.extend(
                [
                    numpy_helper.from_array(scale.astype(np.float32), f"{stem}_scale"),
                    numpy_helper.from_array(zero.astype(np.uint16) * np.uint16(257), f"{stem}_zero_point"),
                ]
            )
            params = [f"{stem}_scale", f"{stem}_zero_point"]
            nodes += [
                onnx.helper.make_node(
                    "QuantizeLinear", [node.input[0], *params], [f"{stem}_q"], name=f"{stem}_QuantizeLinear"
                ),
                onnx.helper.make_node(
                    "DequantizeLinear", [f"{stem}_q", *params], [stem], name=f"{stem}_DequantizeLinear"
                ),
            ]
            node.input[0] = stem
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def wide_tensors(model: onnx.ModelProto, overrides: dict[str, list[dict]]) -> set[str]:
    """Tensors some reader sees in 16 bits: uint16 at the producer and not converted down for every reader."""
    readers: dict[str, set[str]] = defaultdict(set)
    for node in model.graph.node:
        for name in node.input:
            readers[name].add(node.name)
    for out in model.graph.output:
        readers[out.name].add("")  # the graph output reads the producer's type
    wide = set()
    for name, entries in overrides.items():
        entry = entries[0] if entries else {}
        down = entry.get("convert", {}).get("recv_nodes", set())
        if entry.get("quant_type") == WIDE_TYPE and not readers[name] <= set(down):
            wide.add(name)
    return wide


def value_group(model: onnx.ModelProto, tensor: str) -> list[str]:
    """``tensor`` and the tensors holding its values up to a bias or a layout change, in graph order.

    The exporter writes a Linear as MatMul then Add(bias), and splits heads with
    Reshape/Transpose; ONNX Runtime quantizes each of these outputs. Widening only
    the role's tensor would leave the same values rounded to 8 bits one op earlier
    or later (on MiniLM the FFN output's outliers are already in the MatMul output).
    """
    inits = {i.name for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    group = [tensor]
    bias_add = producers.get(tensor)
    if bias_add is not None and bias_add.op_type == "Add" and sum(i in inits for i in bias_add.input) == 1:
        (pre,) = (i for i in bias_add.input if i not in inits)
        group += [pre] if getattr(producers.get(pre), "op_type", "") == "MatMul" else []
    for node in model.graph.node:  # topological order: a layout chain is followed to its end
        if node.op_type in LAYOUT_OPS and node.input[0] in group:
            group.append(node.output[0])
    return group


def with_quantizer_bits(qdq: onnx.ModelProto, ranges: dict[str, tuple[float, float]], bits: int) -> onnx.ModelProto:
    """A copy of a QDQ model whose quantizers of ``ranges``' tensors use the ``bits`` (8 or 16) grid of their range.

    A cheap stand-in for re-running the quantizer with other tensors in 16 bits,
    for sensitivity scans: the CPU provider computes in float between Q/DQ
    pairs, so the result differs from the fixed-up graph of ``int16_overrides``
    only by the converts' re-rounding and by the int32 bias of a Gemm whose input
    scale changes (scores agree as ``tests/quantize/test_mixed_precision.py`` checks).
    """
    out = onnx.ModelProto()
    out.CopyFrom(qdq)
    qtype = {8: onnx.TensorProto.UINT8, 16: onnx.TensorProto.UINT16}[bits]
    qmin, qmax = get_qmin_qmax_for_qType(qtype)
    values = {}
    for tensor, (lo, hi) in ranges.items():
        node = quantizer_of(out, tensor)
        if node is None:
            raise ValueError(f"tensor {tensor!r} has no QuantizeLinear in this QDQ model")
        zero, scale = compute_scale_zp(np.float32(lo), np.float32(hi), qmin, qmax, symmetric=False)
        values[node.input[1]], values[node.input[2]] = np.asarray(scale, np.float32), np.asarray(zero, qmin.dtype)
    for init in out.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(values[init.name].reshape(init.dims), init.name))
    return out
