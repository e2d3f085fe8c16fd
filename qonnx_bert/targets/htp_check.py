"""``qonnx check --ep qnn-htp``: does the QDQ model run on HTP, all of it, all quantized?

Two conditions, both required:

(a) with CPU fallback disabled, session creation succeeds (every node is
    assigned to QNN). If it fails, a second session with fallback allowed and
    ``offload_graph_io_quantization=0`` lists the rejected nodes, and QNN's
    per-node reason is read from its log;
(b) the graph QNN built (``dump_json_qnn_graph``) has no fp32/fp16 tensor except
    at the edge conversions, and no elementwise op mixes 8/16-bit types.

Each problem is named by node, with the fix (the rule it breaks: ``passes.htp_rules.RULES``).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

import onnx

from qonnx_bert.core.files import atomic_outputs
from qonnx_bert.core.modelinfo import TARGET_KEY
from qonnx_bert.graph.qdq import QdqView, unit_owner
from qonnx_bert.passes.htp_rules import diagnose
from qonnx_bert.targets.findings import CheckReport, Finding
from qonnx_bert.targets.qnn import (
    EP_NAME,
    Compiled,
    Soc,
    context_config,
    context_files,
    htp_session,
    qnn_devices,
    require_htp_model,
)
from qonnx_bert.targets.qnn_graph import QnnNode, float_nodes, load_qnn_nodes, mixed_type_nodes, tensor_types

UNVERIFIED = (
    "bit-exactness on silicon (the x86 emulator itself differs from the CPU provider by up to a few uint8 steps per "
    "op), "
    "latency and memory on the device, and the device's driver/firmware versions"
)
_REASON = re.compile(r"failed for node `([^`]+)` of type `([^`]+)` with error code (\d+)")
_ERROR_CODE = re.compile(r"([A-Za-z]\w+\(\)[^\n]*?error code (\d+))")


def check_htp(
    model: onnx.ModelProto, soc: Soc, *, path: str = "model", config: dict[str, str] | None = None
) -> CheckReport:
    """The strict HTP acceptance check for ``soc``; ``config`` adds session entries (EP-context output)."""
    require_htp_model(model, path)
    qnn_devices()  # a missing plugin is a usage error, not a check finding
    report = CheckReport(f"qnn-htp {soc.name} (soc_model {soc.soc_model}, HTP {soc.arch})", unverified=UNVERIFIED)
    if any(p.key == TARGET_KEY and p.value == "cpu" for p in model.metadata_props):
        report.summary.append(
            "this model was quantized for the CPU provider (PEG's target cpu: LayerNorms around the groups in float): "
            "for QNN HTP, quantize again with --target portable (`qonnx quantize`; target=portable from Python)"
        )
    with tempfile.TemporaryDirectory(prefix="qonnx.qnn.") as tmp:
        start = time.perf_counter()
        log: list[str] = []
        try:
            session = htp_session(model, soc, options=_json_dump(tmp), config=config, log=log)
        except Exception as err:  # ORT raises its own Fail/RuntimeException types
            report.summary.append("CPU fallback disabled: session creation failed; diagnosed with fallback allowed")
            report.findings.extend(rejected_nodes(model, soc) or [_graph_failure("".join(log), str(err))])
            return report
        report.summary.append(f"compiled for HTP in {time.perf_counter() - start:.1f} s with CPU fallback disabled")
        report.summary.append(_assignment_line(session))
        qnn_nodes = load_qnn_nodes(Path(tmp))
    report.summary.append(_qnn_graph_line(qnn_nodes))
    report.findings.extend(float_findings(qnn_nodes, model))
    return report


def _json_dump(directory: str) -> dict[str, str]:
    return {"dump_json_qnn_graph": "1", "json_qnn_graph_dir": directory}


def _assignment_line(session) -> str:
    counts = Counter()
    for subgraph in session.get_provider_graph_assignment_info():
        counts[subgraph.ep_name] += len(subgraph.get_nodes())
    other = sum(k for ep, k in counts.items() if ep != EP_NAME)
    return f"{counts[EP_NAME]} nodes (after ORT's graph transforms) assigned to QNN, {other} to CPU"


def _qnn_graph_line(nodes: list[QnnNode]) -> str:
    ops = Counter(n.op_type for n in nodes)
    shown = ", ".join(f"{op} x{k}" for op, k in ops.most_common())
    return f"QNN graph: {len(nodes)} ops ({shown})"


def float_findings(qnn_nodes: list[QnnNode], model: onnx.ModelProto) -> list[Finding]:
    """Condition (b): float compute and mixed-type elementwise ops in the QNN graph, with fixes."""
    view = QdqView(model)
    suspects = [(n, "runs in float inside the HTP graph") for n in float_nodes(qnn_nodes)]
    suspects += [(n, f"mixes types ({tensor_types(n)}), which HTP runs in float") for n in mixed_type_nodes(qnn_nodes)]
    findings: dict[str, Finding] = {}
    for node, what in suspects:
        onnx_node = view.nodes.get(node.name) or view.nodes.get(re.sub(r"_\d+$", "", node.name))
        if node.op_type in ("Quantize", "Dequantize") or node.name in findings:
            continue  # the float op beside a conversion is what gets reported
        findings[node.name] = _float_finding(view, node, onnx_node, what)
    return list(findings.values())


def _float_finding(view: QdqView, node: QnnNode, onnx_node: onnx.NodeProto | None, what: str) -> Finding:
    if onnx_node is None:
        return Finding(node.name, node.op_type, what, "keep the node unit in one 8- or 16-bit type")
    if node.op_type in _FUSED and onnx_node.op_type != _FUSED[node.op_type]:
        problem, fix = _FUSED_FIX[node.op_type]
        return Finding(onnx_node.name, onnx_node.op_type, f"{what}: {problem}", fix)
    problem, fix = diagnose(view, onnx_node)
    return Finding(onnx_node.name, onnx_node.op_type, f"{what}: {problem}", fix)


# QNN fuses some decomposed patterns itself, then runs them in float: the QDQ units are per piece.
_FUSED = {"Gelu": "Gelu", "LayerNorm": "LayerNormalization"}
_FUSED_FIX = {
    "Gelu": (
        "QNN fused a decomposed (Erf) GELU starting here",
        "Erf: fuse GELU into one Gelu op before quantizing (one QDQ node unit)",
    ),
    "LayerNorm": (
        "QNN fused a decomposed LayerNorm starting here",
        "fuse the decomposed LayerNorm into LayerNormalization before quantizing",
    ),
}


def _rejection_reasons(log: str) -> dict[str, str]:
    """ONNX node name -> QNN's reason, from ``backendValidateOpConfig() failed ...`` warnings."""
    reasons = {}
    for name, qnn_type, code in _REASON.findall(log):
        reasons.setdefault(name, f"QNN {qnn_type} validation failed (error {code})")
        reasons.setdefault(re.sub(r"_\d+$", "", name), f"QNN {qnn_type} validation failed (error {code})")
    return reasons


def rejected_nodes(model: onnx.ModelProto, soc: Soc) -> list[Finding]:
    """Condition (a) failed: a second session with fallback allowed names the rejected nodes.

    QNN's reason per node comes from its log; the graph it built for the rest
    is inspected for float work too, so one run reports every problem.
    """
    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="qonnx.qnn.") as tmp:
        options = {"offload_graph_io_quantization": "0", **_json_dump(tmp)}
        try:
            session = htp_session(model, soc, strict=False, options=options, log=log)
        except Exception as err:  # not even buildable with fallback: report QNN's own words
            return [_graph_failure("".join(log), str(err))]
        floats = float_findings(load_qnn_nodes(Path(tmp)), model)
    view, reasons = QdqView(model), _rejection_reasons("".join(log))
    cpu = [
        n.name for sg in session.get_provider_graph_assignment_info() if sg.ep_name != EP_NAME for n in sg.get_nodes()
    ]
    owners: dict[str, tuple[onnx.NodeProto, str | None]] = {}
    for name in (n for n in cpu if n in view.nodes):
        owner = unit_owner(view, view.nodes[name])
        reason = owners.get(owner.name, (owner, None))[1] or reasons.get(name)
        owners[owner.name] = (owner, reason)
    rejected = [_rejection(view, node, reason) for node, reason in owners.values()]
    return rejected + [f for f in floats if f.node not in owners]


def _rejection(view: QdqView, node: onnx.NodeProto, reason: str | None) -> Finding:
    problem, fix = diagnose(view, node)
    return Finding(node.name, node.op_type, f"assigned to CPU ({reason or 'not supported by QNN HTP'}): {problem}", fix)


def _graph_failure(log: str, error: str) -> Finding:
    match = _ERROR_CODE.search(log)
    said = match.group(1) if match else error.strip().splitlines()[0][:300]
    fix = (
        "keep activations per-tensor (HTP rejects per-channel activation quantization)"
        if "graphAddNode" in said
        else ("check the node named in QNN's message against the HTP op rules (`qonnx check -v` shows QNN's log)")
    )
    return Finding("(graph)", "-", f"QNN could not build the graph: {said}", fix)


def compile_htp(model: onnx.ModelProto, soc: Soc, out_dir: Path, name: str) -> tuple[CheckReport, Compiled | None]:
    """Check and compile in one session: ``context_files(out_dir, name)``, only if the check passes.

    The EP writes both files into a staging folder inside ``out_dir`` (the stub names its
    binary by relative path, so they keep their final names there); they are then renamed
    onto the outputs all or none (:func:`atomic_outputs`), so a failed check, a crash or a
    signal leaves nothing half-written, and nothing replaced.
    """
    stub, binary = context_files(out_dir, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".qonnx.") as tmp:
        staged = Path(tmp)
        start = time.perf_counter()
        report = check_htp(model, soc, config=context_config(staged / stub.name))
        seconds = time.perf_counter() - start
        if not report.ok:
            return report, None
        made = sorted(p.name for p in staged.iterdir())
        if made != sorted([stub.name, binary.name]):  # ORT's naming of the binary is what the guard was told
            raise RuntimeError(f"the QNN EP wrote {made}, not {stub.name} and {binary.name}")
        with atomic_outputs(stub, binary) as (stub_tmp, binary_tmp):
            os.replace(staged / stub.name, stub_tmp)
            os.replace(staged / binary.name, binary_tmp)
    return report, Compiled(stub, [binary], seconds)
