"""``qonnx check --ep cpu``: which QDQ node units the CPU provider turns into integer kernels.

ONNX Runtime's CPU provider fuses DQ -> op -> Q units into integer kernels
(QLinearMatMul, QLinearAdd, ...) at session creation; units it has no kernel
for stay DQ -> float op -> Q. The optimized graph (``optimized_model_filepath``)
shows which happened. A MatMul/Gemm with 8-bit operands left in float is a
problem (it carries nearly all the compute); 16-bit ones have no integer CPU
kernel, and LayerNorm/Gelu/Tanh have none either: those are reported, not failed.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnx

from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.graph.qdq import QdqView, is_qdq
from qonnx_bert.targets.findings import CheckReport, Finding

HEAVY = ("MatMul", "Gemm", "Conv")
# A MatMul whose int8 weight ORT folded into a block-quantized kernel that still computes on float
# activations (its fusion of DQ(weight) -> MatMul when the activation is not 8-bit): a float MatMul unit.
_FLOAT_FORMS = {"MatMulNBits": "MatMul"}
UNVERIFIED = (
    "speed on another CPU (kernels depend on its instruction set: AVX2, AVX512-VNNI, Arm); measure latency there"
)


def optimized_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph the CPU provider runs, after its full (level 99) optimizations."""
    with tempfile.TemporaryDirectory(prefix="qonnx.cpu.") as tmp:
        path = str(Path(tmp) / "optimized.onnx")
        cpu_session(model, quiet=True, optimized_path=path)  # quiet: it warns the saved graph is machine-specific
        return onnx.load(path)


def qdq_units(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Non-Q/DQ nodes computing on dequantized values: QDQ units not fused into a kernel."""
    producer = {o: n for n in model.graph.node for o in n.output}
    return [
        n
        for n in model.graph.node
        if not is_qdq(n)
        and any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input)
    ]


def integer_kernels(model: onnx.ModelProto) -> Counter:
    """Integer kernels in an optimized graph: QLinear* ops, QGemm, MatMulInteger*."""
    return Counter(
        n.op_type for n in model.graph.node if n.op_type.startswith(("QLinear", "QGemm", "MatMulInteger", "QAttention"))
    )


def check_cpu(model: onnx.ModelProto, *, path: str = "model") -> CheckReport:
    """Integer kernels used, QDQ units left in float per op type, and a finding per float 8-bit MatMul."""
    before = qdq_units(model)
    if not before:
        raise UsageError(f"{path} has no QDQ node units (a float model); quantize it first with `qonnx quantize`")
    try:
        optimized = optimized_model(model)
    except Exception as err:  # ORT raises its own Fail/InvalidGraph types; the file is what is wrong
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(
            f"{path}: ONNX Runtime's CPU provider cannot load it ({reason}); re-quantize the FP32 model with "
            "`qonnx quantize`"
        ) from None
    kernels, floats = integer_kernels(optimized), qdq_units(optimized)
    report = CheckReport("cpu (ONNX Runtime CPU provider)", unverified=UNVERIFIED)
    shown = ", ".join(f"{op} x{k}" for op, k in kernels.most_common()) or "none"
    report.summary.append(f"integer kernels: {shown}")
    report.summary.extend(_per_op_lines(before, floats))
    view = QdqView(optimized)
    for node in floats:
        op = _FLOAT_FORMS.get(node.op_type, node.op_type)
        report.summary.append(f"float: {node.name} ({node.op_type}), inputs {_types(view, node)}")
        if op in HEAVY and "uint16" not in _types(view, node) and "int16" not in _types(view, node):
            report.findings.append(
                Finding(
                    node.name,
                    node.op_type,
                    f"8-bit {op} runs in float ({_types(view, node)})",
                    "use int8 symmetric weights and uint8 activations (per-tensor) so the CPU provider fuses it",
                )
            )
    if not kernels:
        report.findings.append(
            Finding("(graph)", "-", "no integer kernel at all", "quantize activations too (e.g. the w8a8 scheme)")
        )
    return report


def _types(view: QdqView, node: onnx.NodeProto) -> str:
    return ", ".join(view.input_type(i) for i in node.input if i)


def _per_op_lines(before: list[onnx.NodeProto], floats: list[onnx.NodeProto]) -> list[str]:
    total, left = Counter(n.op_type for n in before), Counter(_FLOAT_FORMS.get(n.op_type, n.op_type) for n in floats)
    return [f"{op}: {k - left[op]} of {k} QDQ units fused into integer kernels" for op, k in sorted(total.items())]
