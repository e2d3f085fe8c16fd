"""One canonical form for every exporter's encoder: what roles, calibration and QDQ insertion read.

Users arrive with the TorchScript exporter's files (opset 14: LayerNorm spelled out
in ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add; opset 17: Erf GELU), with ONNX Runtime's
transformer-optimizer output (``com.microsoft`` fused ops), or with ``qonnx export``'s
own file. ``canonicalize`` turns each into the same form: default-domain opset 21,
``Constant`` nodes lifted to initializers, ``Gelu`` and ``LayerNormalization``
nodes, int64 id inputs, inferred shapes. Every step keeps the FP32 function
(tests compare outputs at 1e-4).

Built on ONNX's version converter, onnx_ir's passes and onnxscript's rewriter:
its GELU and LayerNorm fusion patterns are reused as they are; only their
replacements are ours (onnxscript's GELU rules emit ``com.microsoft`` Gelu, which
HTP and QDQ insertion do not take; ONNX's ``Gelu`` exists since opset 20). The
decompositions of ORT's fused ops are our own rules: no library inverts them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes
from onnx import version_converter
from onnxscript.rewriter import pattern
from onnxscript.rewriter.ort_fusions import erfgelu
from onnxscript.rewriter.ort_fusions.gelu import GeluErfFusion, GeluTanhFusion

# Not re-exported by onnxscript 0.7 (``rules/fusion/__init__`` is empty); the rules are public in all but name.
from onnxscript.rewriter.rules.fusion._layer_norm import LayerNormBiasFusion, LayerNormFusion

from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.modelinfo import INPUT_NAMES
from qonnx_bert.graph.weightless import weightless, with_weights

logger = logging.getLogger(__name__)

OPSET = 21
_MS = "com.microsoft"
_ID_INPUTS = (*INPUT_NAMES, "position_ids")
_REFUSED = {  # fused op -> why it is not decomposed here
    "Attention": "its packed QKV weights and mask-index forms",
    "MultiHeadAttention": "its packed/unpacked key-value forms",
    "EmbedLayerNormalization": "its mask-index output",
    "SkipSimplifiedLayerNormalization": "RMS normalization (not a BERT-family LayerNorm)",
}


@dataclass(frozen=True)
class Canonical:
    """The canonical model and what it took (log lines; empty for a file already canonical)."""

    model: onnx.ModelProto
    changes: tuple[str, ...]


class _ToOnnxGelu(GeluErfFusion):
    """onnxscript's Erf-GELU pattern, replaced by ONNX's own ``Gelu`` (opset 20)."""

    def rewrite(self, op, x):
        return op.Gelu(x)


class _ToOnnxTanhGelu(GeluTanhFusion):
    """onnxscript's tanh-GELU pattern, replaced by ``Gelu(approximate="tanh")``."""

    def rewrite(self, op, x):
        return op.Gelu(x, approximate="tanh")


def _onnx_gelu(op, x):
    return op.Gelu(x)


def _tanh_gelu_halved_first(op, x):
    """``(0.5 x) (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``: transformers' ``gelu_new`` (ALBERT) as
    torch.onnx's dynamo exporter associates it; onnxscript's tanh rule expects ``x (0.5 (1 + tanh(..)))``."""
    inner = op.Mul(op.Add(x, op.Mul(op.Pow(x, 3.0), 0.044715)), math.sqrt(2.0 / math.pi))
    return op.Mul(op.Mul(x, 0.5), op.Add(op.Tanh(inner), 1.0))


def _onnx_tanh_gelu(op, x):
    return op.Gelu(x, approximate="tanh")


def _gelu_rules() -> pattern.RewriteRuleSet:
    """Built per model: a rule's matcher keeps the last graph it matched in (a model-sized leak if kept)."""
    return pattern.RewriteRuleSet(
        [
            _ToOnnxGelu.rule(),
            _ToOnnxTanhGelu.rule(),
            pattern.RewriteRule(erfgelu.erf_gelu_pattern_1, _onnx_gelu),
            pattern.RewriteRule(erfgelu.erf_gelu_pattern_2, _onnx_gelu),
            pattern.RewriteRule(_tanh_gelu_halved_first, _onnx_tanh_gelu),
        ],
        commute=True,
    )


def _fused(node_out: ir.Value) -> ir.Node:
    node = node_out.producer()
    assert node is not None
    return node


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


class SkipLayerNormDecomposition(pattern.RewriteRuleClassBase):
    """``SkipLayerNormalization(x, skip, gamma, beta?, bias?)`` = ``LayerNorm((x + bias) + skip)``.

    The bias joins ``x`` first, so the dense layer's ``MatMul + bias`` and the residual
    ``Add`` come back as the two nodes roles look for. ``residual="Sum"`` writes the residual
    sum as ``Sum``, which ORT's session-time ``SkipLayerNormFusion`` (it matches ``Add``) leaves alone.
    """

    def __init__(self, residual: str = "Add") -> None:
        super().__init__(f"SkipLayerNormDecomposition{residual}")
        self.residual = residual

    def pattern(self, op, x, skip):
        return op.SkipLayerNormalization(
            x, skip, _domain=_MS, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["out"]
        )

    def check(self, context, out, **_):
        result = pattern.MatchResult()
        if any(v.uses() for v in _fused(out).outputs[1:]):
            return result.fail("mean/inv-std/sum outputs in use")
        return result

    def rewrite(self, op, x, skip, out):
        node = _fused(out)
        bias = _input(node, 4)
        summed = getattr(op, self.residual)(op.Add(x, bias) if bias is not None else x, skip)
        epsilon = node.attributes.get_float("epsilon", 1e-12)
        beta = _input(node, 3)
        args = (summed, node.inputs[2]) if beta is None else (summed, node.inputs[2], beta)
        return op.LayerNormalization(*args, axis=-1, epsilon=epsilon)


class _BiasGelu(pattern.RewriteRuleClassBase):
    """``BiasGelu(x, b)`` = ``Gelu(x + b)`` (erf form)."""

    def pattern(self, op, x, bias):
        return op.BiasGelu(x, bias, _domain=_MS)

    def rewrite(self, op, x, bias):
        return op.Gelu(op.Add(x, bias))


class _FastGelu(pattern.RewriteRuleClassBase):
    """``FastGelu(x, b?)`` = ``Gelu(x + b, approximate="tanh")``."""

    def pattern(self, op, x):
        return op.FastGelu(x, _domain=_MS, _allow_other_inputs=True, _outputs=["out"])

    def rewrite(self, op, x, out):
        bias = _input(_fused(out), 1)
        return op.Gelu(op.Add(x, bias) if bias is not None else x, approximate="tanh")


def _nan_guarded_softmax(op, x, zero):
    probs = op.Softmax(x, _outputs=["probs"])
    return op.Where(op.IsNaN(probs), zero, probs)


def _plain_softmax(op, x, zero, probs):
    return op.Softmax(x, **probs.producer().attributes)


def _is_zero(context, zero, **_) -> bool:
    value = zero.const_value
    return value is not None and value.size == 1 and float(value.numpy().reshape(())) == 0.0


def _unfuse_rules() -> pattern.RewriteRuleSet:
    """Built per model, as ``_gelu_rules``."""
    return pattern.RewriteRuleSet(
        [
            SkipLayerNormDecomposition.rule(),
            _BiasGelu.rule(),
            _FastGelu.rule(),
            # PyTorch's SDPA, traced: Where(IsNaN(p), 0, p) zeroes rows whose every key is masked. A BERT
            # query always sees its own unpadded keys, so no row is NaN and the guard is the identity.
            pattern.RewriteRule(_nan_guarded_softmax, _plain_softmax, _is_zero),
        ]
    )


def _refuse_fused(model: onnx.ModelProto, path: str) -> None:
    for node in model.graph.node:
        if node.domain == _MS and node.op_type in _REFUSED:
            raise UsageError(
                f"{path} has ONNX Runtime's fused {node.op_type} ({_REFUSED[node.op_type]}), which qonnx does not "
                "decompose; quantize the unfused export (before onnxruntime.transformers.optimizer)"
            )


def _upgrade(light: onnx.ModelProto, changes: list[str]) -> onnx.ModelProto:
    version = next((o.version for o in light.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    if version >= OPSET:
        return light
    changes.append(f"opset {version} -> {OPSET} (onnx.version_converter)")
    # the converter needs no weight values (attribute-to-input moves make their own constants)
    return version_converter.convert_version(light, OPSET)


def _int64_inputs(graph: ir.Graph) -> int:
    """Make int32 id and mask inputs int64, casting back inside: the encoder always feeds int64.

    Hand-written: no pass retypes graph inputs.
    """
    count = 0
    for value in graph.inputs:
        if value.name not in _ID_INPUTS or value.dtype != ir.DataType.INT32:
            continue
        inner = ir.Value(name=f"{value.name}_int32", type=ir.TensorType(ir.DataType.INT32), shape=value.shape)
        value.replace_all_uses_with(inner)
        graph.insert_before(graph[0], ir.node("Cast", [value], {"to": ir.DataType.INT32}, outputs=[inner]))
        value.dtype = ir.DataType.INT64
        count += 1
    return count


_WEIGHT_READERS = ("MatMul", "Gemm", "Gather")


def _unshare_weights(graph: ir.Graph, sources: dict[str, str]) -> int:
    """Give every reader of a shared float weight its own copy; returns the copies made.

    Exporters share one initializer between layers (ALBERT's shared layer, TorchScript's
    deduplicated equal biases); PEG's folds and the split FFN edit one layer's weights,
    which must not reach the others. Hand-written: onnx_ir's passes only deduplicate.
    A weightless stub's copy is a stub too; ``sources`` records which weight fills it.
    """
    copies = 0
    for value in list(graph.initializers.values()):
        tensor = value.const_value
        if tensor is None or value.dtype != ir.DataType.FLOAT or tensor.size < 2:
            continue
        if sum(node.op_type in _WEIGHT_READERS for node, _ in value.uses()) < 2:
            continue  # not a layer's weight matrix shared across layers (PEG's passes copy small shared constants)
        for k, (node, index) in enumerate(list(value.uses())[1:], start=1):
            name = f"{value.name}.use{k}"
            if isinstance(tensor, ir.ExternalTensor):
                filled = ir.ExternalTensor(tensor.location, None, None, tensor.dtype, shape=tensor.shape, name=name)
                sources[name] = sources.get(value.name, value.name)
            else:
                filled = ir.tensor(tensor.numpy(), name=name)
            copy = ir.Value(name=name, type=value.type, shape=value.shape, const_value=filled)
            graph.register_initializer(copy)
            node.replace_input_with(index, copy)
            copies += 1
    return copies


def _rewrite(light: onnx.ModelProto, changes: list[str], sources: dict[str, str]) -> onnx.ModelProto:
    irm = ir.from_proto(light)
    irm.opset_imports[""] = OPSET  # the converter already brought the default domain to OPSET
    lifted = ir_passes.LiftConstantsToInitializersPass(size_limit=0)(irm).modified
    if ir_passes.IdentityEliminationPass()(irm).modified or lifted:
        changes.append("Constant nodes lifted / Identity nodes removed")
    ir_passes.AddDefaultAttributesPass()(irm)  # patterns name attributes (keepdims=1) exporters leave at default
    counts = {
        "fused ops decomposed, NaN guards dropped": _unfuse_rules().apply_to_model(irm),
        "GELUs fused to Gelu": _gelu_rules().apply_to_model(irm),
        "LayerNorms fused": pattern.RewriteRuleSet(
            [LayerNormFusion.rule(), LayerNormBiasFusion.rule()], commute=True
        ).apply_to_model(irm),
        "int32 inputs made int64": _int64_inputs(irm.graph),
        "shared weights copied per reader": _unshare_weights(irm.graph, sources),
    }
    changes.extend(f"{what}: {n}" for what, n in counts.items() if n)
    for step in (
        ir_passes.RemoveUnusedNodesPass(),
        ir_passes.RemoveUnusedOpsetsPass(),
        ir_passes.NameFixPass(),
        ir_passes.TopologicalSortPass(),
        ir_passes.ShapeInferencePass(),
    ):
        step(irm)
    return ir.to_proto(irm)


def canonicalize(model: onnx.ModelProto, path: str = "model") -> Canonical:
    """The canonical form of an FP32 encoder: ``model`` itself when it already is one (left as it was).

    The rewrites run on a weightless copy (large weights as stubs: no rule reads their values),
    so a model-sized copy is made only when something changed, once, when the weights go back in.
    """
    _refuse_fused(model, path)
    changes: list[str] = []
    sources: dict[str, str] = {}  # weight copy -> the weight it copies (``_unshare_weights``)
    light = _rewrite(_upgrade(weightless(model), changes), changes, sources)
    if not changes:  # already canonical (e.g. `qonnx export`'s): keep the file as written, so its fingerprint holds
        return Canonical(model, ())
    leftover = sorted({n.op_type for n in light.graph.node if n.domain == _MS})
    if leftover:
        raise UsageError(
            f"{path}: fused ONNX Runtime op(s) {', '.join(leftover)} left after decomposition; "
            "quantize the unfused export (before onnxruntime.transformers.optimizer)"
        )
    logger.debug("canonical form: %s", "; ".join(changes))
    return Canonical(with_weights(light, model, sources), tuple(changes))
