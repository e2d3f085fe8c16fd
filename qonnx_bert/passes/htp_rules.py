"""The measured Qualcomm HTP rules, applied by the QDQ writer for every scheme.

HTP (through ONNX Runtime's QNN execution provider) takes a QDQ node unit only
when its types follow its op validators; otherwise it rejects the node (the
node then falls back to the CPU) or, worse, runs it in float inside its own
graph without a word. What was measured with onnxruntime-qnn 2.7 (QNN 2.51):

* LayerNormalization with an int8 symmetric gamma is rejected (error 3110);
  a uint8 asymmetric gamma is taken. (ORT's quantizer treats gamma as a weight:
  int8 symmetric.)
* Add/Mul with a constant (a bias) in another type than its activations runs
  in float: an int8 bias on a uint8 Add, a uint8 bias on a uint16 Add. In the
  op's activation type (asymmetric) it runs quantized. A LayerNorm beta must
  stay ORT's int32 bias (as uint8/uint16/int16 the LayerNorm runs in float).
* A bool ``GatherND`` (transformers' attention-mask indexing) is rejected; with
  constant indices it is a Reshape (or a flat Gather) and then runs on HTP.
* An Add whose input scales are far apart loses precision: the additive
  attention mask (fill -1e4, uint8 step 39) added to scores (step ~0.2) came out
  ~3.5 steps off on average. The mask only has to push masked scores below the
  softmax-input grid, so its grid is narrowed to just that (``mask_overrides``):
  the Add is then exact, and the CPU provider computes the same values as before.
* ``Where(mask, 0, fill)`` with float constant branches runs in float: ORT's
  quantizer quantizes Where only when its branches already are. The constants
  are quantized on the output's grid after ORT's pass (``quantize_where_constants``).

Each rule is also in ``RULES`` with what applies it and how ``qonnx check --ep qnn-htp``
recognises a node unit that breaks it (``diagnose``): one place per rule.

The rules are ``TensorQuantOverrides`` entries plus a small graph fix-up, so
the QDQ model stays a plain ONNX model that the CPU provider runs too. Scheme
overrides win over these (``passes.qdq`` merges them that way): a scheme that
breaks a rule gets caught by ``qonnx check --ep qnn-htp``, not silently fixed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qonnx_bert.graph.cleanup import drop_unused_initializers
from qonnx_bert.graph.ops import ELEMENTWISE_OPS
from qonnx_bert.graph.qdq import QdqView
from qonnx_bert.graph.static_indexing import constant_gather_nd
from qonnx_bert.graph.weightless import is_stub, stub, weightless

# Consumers whose float constants must be in the op's activation type.


def _quant_types():
    from onnxruntime.quantization import QuantType

    return QuantType.QUInt8, (QuantType.QUInt16, QuantType.QInt16)


def _read_type(overrides: dict[str, list[dict]], tensor: str, reader: str | None):
    """The type ``reader`` sees for ``tensor`` under the scheme's overrides (a ``convert`` counts)."""
    entry = (overrides.get(tensor) or [{}])[0]
    convert = entry.get("convert") or {}
    if reader is not None and reader in (convert.get("recv_nodes") or ()):
        return convert.get("quant_type")
    return entry.get("quant_type")


def activation_type(node: onnx.NodeProto, overrides: dict[str, list[dict]], constants: set[str]):
    """The op's activation type: 16-bit if the scheme puts any of its activations in 16 bits, else uint8."""
    u8, wide = _quant_types()
    types = [_read_type(overrides, t, node.name) for t in node.input if t and t not in constants]
    types += [_read_type(overrides, t, None) for t in node.output]
    return next((t for t in types if t in wide), u8)


def htp_overrides(model: onnx.ModelProto, overrides: dict[str, list[dict]] | None = None) -> dict[str, list[dict]]:
    """``TensorQuantOverrides``: LayerNorm gammas in uint8, elementwise constants in their op's activation type.

    ``overrides`` are the scheme's own (16-bit tensors, converts): a bias added
    to a uint16 activation must be uint16 too, or HTP runs the Add in float.
    """
    u8, _ = _quant_types()
    overrides = overrides or {}
    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    out: dict[str, list[dict]] = {}
    for node in model.graph.node:
        if node.op_type == "LayerNormalization" and len(node.input) > 1 and node.input[1] in floats:
            out[node.input[1]] = [{"quant_type": u8, "symmetric": False}]  # u8 even under 16-bit activations
        elif node.op_type in ELEMENTWISE_OPS:
            qtype = activation_type(node, overrides, floats)
            out.update({i: [{"quant_type": qtype, "symmetric": False}] for i in node.input if i in floats})
    return out


def mask_overrides(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]]) -> dict[str, list[dict]]:
    """Narrow the additive attention mask's range to what the score + mask Adds need.

    A masked score must land at or below the bottom of the Add output's grid:
    ``hi(scores) - S <= lo(output)``, so ``S = max(hi(scores) - lo(output)) + 1``
    over every Add reading the mask (one mask serves all layers). The fill
    (e.g. -1e4) then clamps to ``-S``, which still clamps every masked score to
    the bottom: the same numbers as before on the CPU provider, an exact Add on HTP.
    """
    from qonnx_bert.calibration.tensors import quantizable_tensors

    masks = {t.name for t in quantizable_tensors(model) if t.mask_path and t.name in ranges}
    need: dict[str, float] = {}
    for node in model.graph.node:
        inputs = [i for i in node.input if i in masks]
        if node.op_type != "Add" or len(inputs) != 1 or node.output[0] not in ranges:
            continue
        other = next((i for i in node.input if i != inputs[0]), None)
        if other in ranges:
            gap = ranges[other][1] - ranges[node.output[0]][0]
            need[inputs[0]] = max(need.get(inputs[0], 0.0), float(np.ceil(gap)) + 1.0)
    out = {}
    for name, span in need.items():
        lo, hi = ranges[name]
        if lo < -span:
            out[name] = [{"rmin": np.float32(-span), "rmax": np.float32(max(hi, 0.0))}]
    return out


def htp_edits(
    model: onnx.ModelProto,
    overrides: dict[str, list[dict]] | None = None,
    ranges: dict[str, tuple[float, float]] | None = None,
) -> tuple[onnx.ModelProto, dict[str, str], dict[str, list[dict]]]:
    """The fixes and overrides that make ``model``'s QDQ graph HTP-clean, made on a weightless copy (its large
    weights are stubs, never copied): that copy, the constants it copied (copy -> original: ``with_weights``
    fills both from ``model``) and the overrides."""
    out = weightless(model)
    constant_gather_nd(out)
    copies = unshare_elementwise_constants(out)
    inherited = {copy: (overrides or {})[orig] for copy, orig in copies.items() if orig in (overrides or {})}
    return out, copies, {**htp_overrides(out, overrides), **mask_overrides(out, ranges or {}), **inherited}


def unshare_elementwise_constants(model: onnx.ModelProto) -> dict[str, str]:
    """Give each elementwise use of a shared float constant its own copy; returns copy -> original.

    The exporter deduplicates equal initializers (a zero bias may be a LayerNorm
    beta and several Linear biases at once). One override per tensor name could
    then not give each use its own type: the beta must stay an int32 bias, a
    bias under 16-bit activations must be uint16 while another is uint8. A
    scheme's override on the original name applies to its copies (``htp_edits``).
    """
    inits = {i.name: i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    uses = Counter(i for n in model.graph.node for i in n.input if i in inits)
    copies: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in ELEMENTWISE_OPS:
            continue
        for k, name in enumerate(node.input):
            if uses[name] > 1:
                copy_name = f"{name}_{node.name or len(copies)}"
                if is_stub(inits[name]):  # a weightless copy's large constant: a stub, filled later (``with_weights``)
                    copy = stub(inits[name])
                    copy.name = copy_name
                else:
                    copy = numpy_helper.from_array(numpy_helper.to_array(inits[name]), copy_name)
                model.graph.initializer.append(copy)
                node.input[k] = copy.name
                copies[copy.name] = name
    return copies


def _only_consumer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    users = [n for n in model.graph.node if tensor in n.input]
    return users[0] if len(users) == 1 and not any(o.name == tensor for o in model.graph.output) else None


def quantize_where_constants(model: onnx.ModelProto) -> int:
    """Feed the float constant branches of a quantized Where through DequantizeLinear, in place.

    Each constant is quantized on the grid of the Where output's QuantizeLinear,
    so the node unit is DQ, DQ -> Where -> Q with one scale (exact for the
    additive mask's 0 and fill, which calibration put at the ends of the grid).
    Returns how many constants were replaced.
    """
    inits = {i.name: i for i in model.graph.initializer}
    replaced: set[str] = set()
    for node in [n for n in model.graph.node if n.op_type == "Where"]:
        q = _only_consumer(model, node.output[0])
        branches = [
            k for k in (1, 2) if node.input[k] in inits and inits[node.input[k]].data_type == onnx.TensorProto.FLOAT
        ]
        if q is None or q.op_type != "QuantizeLinear" or not branches:
            continue
        scale, zp = numpy_helper.to_array(inits[q.input[1]]), numpy_helper.to_array(inits[q.input[2]])
        for k in branches:
            replaced.add(node.input[k])
            node.input[k] = _dequantized_constant(model, inits[node.input[k]], scale, zp, f"{node.name}_{k}")
    drop_unused_initializers(model, replaced)
    return len(replaced)


def _dequantized_constant(
    model: onnx.ModelProto, init: onnx.TensorProto, scale: np.ndarray, zp: np.ndarray, stem: str
) -> str:
    """Add ``DequantizeLinear(quantized init)`` at the front of the graph; returns its output name."""
    info = np.iinfo(zp.dtype)
    q = np.clip(np.round(numpy_helper.to_array(init) / scale) + zp.astype(np.int64), info.min, info.max).astype(
        zp.dtype
    )
    names = (f"{stem}_quantized", f"{stem}_scale", f"{stem}_zero_point")
    model.graph.initializer.extend(numpy_helper.from_array(a, n) for a, n in zip((q, scale, zp), names, strict=True))
    model.graph.node.insert(
        0, helper.make_node("DequantizeLinear", list(names), [f"{stem}_dq"], name=f"{stem}_DequantizeLinear")
    )
    return f"{stem}_dq"


# --- Diagnosis: the same rules, recognised in a finished QDQ graph (``qonnx check --ep qnn-htp``) ---
# QNN only says "error code 3110" (op config not supported); the QDQ types around a node say
# which rule it breaks. Each rule's ``fixed_by`` names what keeps qonnx's own graphs to it.

CONVERT_FIX = "insert a convert (DQ -> Q) before the op so that its inputs and output share one type"
Diagnosis = tuple[str, str]  # (problem, fix)


@dataclass(frozen=True)
class HtpRule:
    """One measured HTP rule: what keeps the QDQ writer to it, and how a unit breaking it is recognised."""

    name: str
    fixed_by: str
    diagnose: Callable[[QdqView, onnx.NodeProto], Diagnosis | None]


def _activation_types(view: QdqView, node: onnx.NodeProto) -> set[str]:
    """The 8/16-bit types of the node's non-constant inputs and of its outputs."""
    ins = [view.input_type(i) for i in node.input if i and i not in view.inits and not view.is_dequantized_constant(i)]
    return {t for t in ins + [view.output_type(o) for o in node.output] if t in ("uint8", "uint16", "int8", "int16")}


def _erf(view: QdqView, node: onnx.NodeProto) -> Diagnosis | None:
    if node.op_type != "Erf":
        return None
    return (
        "Erf is not an HTP op (an unfused GELU)",
        "Erf: fuse GELU into one Gelu op before quantizing (export at opset >= 20, or onnxscript's erf-GELU rewrite)",
    )


def _gather_nd(view: QdqView, node: onnx.NodeProto) -> Diagnosis | None:
    if node.op_type != "GatherND":
        return None
    return (
        "GatherND is rejected by HTP",
        "rewrite a constant-index GatherND as Reshape/Gather "
        "(qonnx's HTP rules do this for the attention mask; re-run `qonnx quantize`)",
    )


def _layernorm_gamma(view: QdqView, node: onnx.NodeProto) -> Diagnosis | None:
    gamma = view.input_type(node.input[1]) if node.op_type == "LayerNormalization" and len(node.input) > 1 else "uint8"
    if gamma == "uint8":
        return None
    return (
        f"LayerNorm gamma is {gamma}",
        "LayerNorm gamma must be uint8 (asymmetric), also under 16-bit activations: "
        "drop the override on it (qonnx's HTP rules set uint8)",
    )


def _layernorm_beta(view: QdqView, node: onnx.NodeProto) -> Diagnosis | None:
    has_beta = node.op_type == "LayerNormalization" and len(node.input) > 2 and node.input[2]
    beta = view.input_type(node.input[2]) if has_beta else "int32"
    if beta in ("int32", "float constant"):
        return None
    return (
        f"LayerNorm beta is {beta}",
        "LayerNorm beta must stay ORT's int32 bias (scale = input scale x gamma scale): drop the override on it",
    )


def _mixed_types(view: QdqView, node: onnx.NodeProto) -> Diagnosis | None:
    kinds = _activation_types(view, node)
    if not {"uint8", "uint16"} <= kinds:
        return None
    return f"mixed u8/u16 activations ({', '.join(sorted(kinds))})", f"mixed u8/u16 inputs: {CONVERT_FIX}"


def _dequantized_constants(view: QdqView, node: onnx.NodeProto) -> dict[str, str]:
    return {
        view.producer[i].input[0].removesuffix("_quantized"): view.input_type(i)
        for i in node.input
        if i and view.is_dequantized_constant(i)
    }


def _elementwise_constant(view: QdqView, node: onnx.NodeProto) -> Diagnosis | None:
    acts = _activation_types(view, node)
    act = next(iter(acts)) if len(acts) == 1 else None
    wrong = [(name, t) for name, t in _dequantized_constants(view, node).items() if act and t != act]
    if node.op_type not in ELEMENTWISE_OPS or not wrong:
        return None
    name, t = wrong[0]
    return (
        f"constant {name} is {t} under {act} activations",
        f"{node.op_type} constant (bias) must be in the activation type ({act}, asymmetric)",
    )


def _wide_weights(view: QdqView, node: onnx.NodeProto) -> Diagnosis | None:
    wide = "uint16" in _dequantized_constants(view, node).values()
    if node.op_type not in ("MatMul", "Gemm") or not wide or _activation_types(view, node) != {"uint8"}:
        return None
    return (
        "uint16 weights with uint8 activations",
        "use int8 weights, or 16-bit activations on both sides of the MatMul",
    )


def _float_constant(view: QdqView, node: onnx.NodeProto) -> Diagnosis | None:
    floats = [i for i in node.input if view.input_type(i) == "float constant"]
    if not floats:
        return None
    return f"float constant input {floats[0]}", "quantize the constant in the activation type (a DQ'd initializer)"


def _float_tensor(view: QdqView, node: onnx.NodeProto) -> Diagnosis | None:
    floats = [i for i in node.input if i and view.input_type(i) == "float"]
    floats += [o for o in node.output if view.output_type(o) == "float"]
    if not floats:
        return None
    return (
        f"float tensor {floats[0]} between quantized ops",
        f"add a Q/DQ pair on {floats[0]} so HTP gets a fixed-point {node.op_type} "
        "(or fuse the pattern into an op HTP quantizes)",
    )


def _gathered_table(view: QdqView, node: onnx.NodeProto) -> Diagnosis | None:
    """HTP's Gather only moves values: its table and its output share one 8/16-bit per-tensor encoding."""
    if node.op_type != "Gather" or not view.is_dequantized_constant(node.input[0]):
        return None
    table = view.producer[node.input[0]]
    scale = view.inits.get(table.input[1])
    per_row = scale is not None and int(np.prod(scale.dims)) > 1
    out = [n for n in view.model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == node.output[0]]
    kind = view.input_type(node.input[0])
    if not per_row and kind in ("uint8", "uint16") and out and out[0].input[1] == table.input[1]:
        return None
    layout = "one scale per row" if per_row else "per-tensor"
    return (
        f"embedding table {table.input[0]} is {kind} with {layout}, and the Gather's output is on another grid",
        "for HTP, quantize with 8-bit embeddings (no --embedding-bits): low-bit tables are for the CPU "
        "provider and the file size",
    )


# In diagnosis order: the first rule a unit breaks is reported.
RULES = (
    HtpRule("GELU is one Gelu op", "export at opset >= 20 / graph canonicalization", _erf),
    HtpRule("no bool GatherND", "constant_gather_nd", _gather_nd),
    HtpRule("LayerNorm gamma in uint8", "htp_overrides", _layernorm_gamma),
    HtpRule("LayerNorm beta is ORT's int32 bias", "htp_overrides (no override on beta)", _layernorm_beta),
    HtpRule("one activation type per node unit", "passes.mixed_precision (8/16 converts)", _mixed_types),
    HtpRule(
        "elementwise constants in the activation type",
        "htp_overrides, unshare_elementwise_constants",
        _elementwise_constant,
    ),
    HtpRule("no uint16 weights under uint8 activations", "schemes keep weights int8", _wide_weights),
    HtpRule("no float constant inputs", "quantize_where_constants", _float_constant),
    HtpRule("a Gather keeps its table's encoding", "the schemes' 8-bit per-tensor embeddings", _gathered_table),
    HtpRule("no float tensor between quantized ops", "the schemes quantize every activation", _float_tensor),
)


def diagnose(view: QdqView, node: onnx.NodeProto) -> Diagnosis:
    """(problem, fix) for an ONNX node that HTP rejected or runs in float: the first rule it breaks."""
    for rule in RULES:
        found = rule.diagnose(view, node)
        if found:
            return found
    return (
        "QNN cannot map this node unit to a fixed-point op",
        "keep the node unit's inputs and outputs in one 8- or 16-bit type (per-tensor); see QNN's HTP op definitions",
    )
