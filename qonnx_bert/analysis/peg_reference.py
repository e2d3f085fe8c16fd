"""An independent reference for lowered PEG: the same groups simulated per channel on the un-rewritten graph.

Start from the W8A8 model of the original FP32 graph (ONNX Runtime's quantizer, no rewrite)
and, per PEG layer, give every tensor PEG quantizes per group a per-channel QDQ (axis -1)
whose channels take their group's calibrated range: the FFN input, the second dense layer's
output before and after its bias, the residual sum, and the GELU output where PEG splits its
units. The FFN weights are fake-quantized (a float constant holding the int8-rounded values)
with one symmetric scale per block the lowering's split MatMuls have: W1 per group of input
rows, W2 per (unit group, hidden group) block.

Nothing of the lowering is reused but the choice of groups (``choose_groups``): no
permutation, no Split or Concat, no partial products, one accumulator per dense layer. So the
lowered model must compute what this graph computes, up to the rounding of values that land
on a tie and to float summation order; HTP rejects per-channel activations, which is why PEG
is lowered at all. Used by ``tests/quantize/test_peg.py`` and ``bench/peg_reference.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from qonnx_bert.calibration.ranges import RangeTable
from qonnx_bert.graph.roles import find_roles
from qonnx_bert.quantize.api import quantize
from qonnx_bert.quantize.config import PegConfig, W8A8Config
from qonnx_bert.quantize.schemes.peg import choose_groups


def _channel_params(lo: np.ndarray, hi: np.ndarray, groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 asymmetric scale/zero point per channel, each channel taking its group's range (0 included)."""
    scale, zero = np.zeros(len(lo), np.float32), np.zeros(len(lo), np.uint8)
    for g in groups:
        rmin, rmax = min(lo[g].min(), 0.0), max(hi[g].max(), 0.0)
        scale[g] = (rmax - rmin) / 255.0
        zero[g] = np.uint8(np.clip(np.round(-rmin / scale[g][0]), 0, 255))
    return scale, zero


def _set_per_channel(model: onnx.ModelProto, tensor: str, scale: np.ndarray, zero: np.ndarray) -> None:
    """Turn ``tensor``'s per-tensor Q/DQ into a per-channel one (axis -1) with the given parameters."""
    inits = {i.name: i for i in model.graph.initializer}
    quant = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor]
    dequant = [
        n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in {q.output[0] for q in quant}
    ]
    assert len(quant) == 1 and dequant, tensor
    for node in quant + dequant:
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(scale, node.input[1]))
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(zero, node.input[2]))
        node.attribute.append(onnx.helper.make_attribute("axis", -1))


def _fake_quantize_blocks(
    model: onnx.ModelProto, weight: str, values: np.ndarray, rows: list[np.ndarray], cols: list[np.ndarray]
) -> None:
    """Replace ``weight``'s int8 DequantizeLinear by a float constant rounded with one scale per (rows, cols) block."""
    out = np.empty_like(values)
    for r in rows:
        for c in cols:
            block = values[np.ix_(r, c)]
            scale = np.float32(np.abs(block).max() / 127.0)
            out[np.ix_(r, c)] = np.clip(np.round(block / scale), -127, 127) * scale
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == weight + "_quantized")
    name = f"{weight}_block_quantized"
    model.graph.initializer.append(numpy_helper.from_array(out.astype(np.float32), name))
    for node in model.graph.node:
        node.input[:] = [name if i == dq.output[0] else i for i in node.input]
    model.graph.node.remove(dq)
    unused = set(dq.input)
    kept = [i for i in model.graph.initializer if i.name not in unused]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def per_channel_reference(fp32: onnx.ModelProto, ranges: RangeTable, config: PegConfig) -> onnx.ModelProto:
    """W8A8 with the groups ``config`` would choose, simulated per channel (see the module docstring)."""
    roles = find_roles(fp32)
    ref, _ = quantize(fp32, W8A8Config(), ranges)
    chosen = choose_groups(ranges.per_channel, config, roles.num_layers)
    producers = {o: n for n in fp32.graph.node for o in n.output}
    consts = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}

    def dense(role: str) -> tuple[str, str, np.ndarray]:
        """(MatMul output, weight name, bias) of the dense layer whose bias Add writes ``role``."""
        add = producers[roles.tensor(role)]
        matmul = producers[next(i for i in add.input if i not in consts)]
        return matmul.output[0], matmul.input[1], next(consts[i] for i in add.input if i in consts)

    for layer, groups in chosen.hidden.items():
        units = chosen.units[layer]
        stats = {r: ranges.per_channel[f"layer.{layer}.ffn.{r}"] for r in ("input", "output", "residual_sum")}
        for entry in stats.values():
            _set_per_channel(
                ref, entry["tensor"], *_channel_params(np.asarray(entry["min"]), np.asarray(entry["max"]), groups)
            )
        pre_bias, w2, b2 = dense(f"layer.{layer}.ffn.output")
        lo, hi = np.asarray(stats["output"]["min"]) - b2, np.asarray(stats["output"]["max"]) - b2
        _set_per_channel(ref, pre_bias, *_channel_params(lo, hi, groups))
        _, w1, _ = dense(f"layer.{layer}.ffn.intermediate")
        every_unit = [np.arange(consts[w1].shape[1])]
        _fake_quantize_blocks(ref, w1, consts[w1], groups, every_unit)
        _fake_quantize_blocks(ref, w2, consts[w2], units or every_unit, groups)
        if units:
            gelu = ranges.per_channel[f"layer.{layer}.ffn.gelu"]
            _set_per_channel(
                ref, gelu["tensor"], *_channel_params(np.asarray(gelu["min"]), np.asarray(gelu["max"]), units)
            )
    return ref
