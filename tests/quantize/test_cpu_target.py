"""``target=cpu``: only the inputs of weighted MatMuls are rounded, and the CPU provider runs them as integer kernels.

The reference is NumPy: for every weighted MatMul, the float input rounded on the uint8 grid
of its range in the ranges file, times the float weight rounded to int8 per output column,
against what ONNX Runtime's fused integer kernel (MatMulIntegerToFloat) returns.
"""

from collections import Counter
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from qonnx_bert.calibration.ranges import model_fingerprint
from qonnx_bert.core.metrics import sqnr_db
from qonnx_bert.core.modelinfo import TARGET_KEY
from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.graph.prepare import prepare
from qonnx_bert.graph.qdq import is_qdq
from qonnx_bert.graph.roles import find_roles
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.sequences import shipped_sentences
from qonnx_bert.passes.plan import activation_ranges
from qonnx_bert.passes.qdq import insert_qdq
from qonnx_bert.quantize import config_for, quantize
from qonnx_bert.quantize.schemes import SchemeContext, get_scheme
from qonnx_bert.targets.cpu import check_cpu, optimized_model
from tests.conftest import RAGGED_TEXTS

TEXTS = shipped_sentences()[:24]
CASES = [
    ("w8a8", {}),
    ("peg", {"groups": 3}),
    ("peg", {"groups": 1, "intermediate_groups": 2}),
    ("smoothquant", {"alpha": 0.7}),
]


def _weighted_matmuls(model):
    """(node, float input tensor, weight DequantizeLinear) of every MatMul reading a dequantized initializer."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        w = producer.get(n.input[1]) if n.op_type == "MatMul" else None
        if w is not None and w.op_type == "DequantizeLinear" and w.input[0] in inits:
            act_dq = producer[n.input[0]]
            out.append((n, producer[act_dq.input[0]].input[0], w))
    return out


def _run(model, names, *, fused: bool):
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    options = ort.SessionOptions()
    if not fused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    encoder = Encoder.from_model(model)
    runs = [session.run(names, encoder.feeds([t])) for t in TEXTS]
    return [np.concatenate([r[i].reshape(-1, r[i].shape[-1]) for r in runs]) for i in range(len(names))]


@pytest.mark.parametrize("scheme, options", CASES)
def test_only_weighted_matmuls_read_rounded_activations(fp32, ranges, scheme, options):
    model, report = quantize(fp32, config_for(scheme, target="cpu", **options), ranges)
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if is_qdq(node) or node.op_type in ("MatMul", "Gemm"):
            continue
        for name in node.input:  # a non-MatMul reads a dequantized activation only as an exact Gather of a table
            dq = producer.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in producer:
                assert producer[producer[dq.input[0]].input[0]].op_type == "Gather", node.name
    assert not any(producer[q.input[0]].op_type == "MatMul" for q in model.graph.node if q.op_type == "QuantizeLinear")
    assert 16 not in report.activation_bits
    assert {p.key: p.value for p in model.metadata_props}[TARGET_KEY] == "cpu"


@pytest.mark.parametrize("scheme, options", CASES)
def test_every_weighted_matmul_is_an_integer_kernel_computing_the_numpy_reference(fp32, ranges, scheme, options):
    model, _ = quantize(fp32, config_for(scheme, target="cpu", **options), ranges)
    matmuls = _weighted_matmuls(model)
    optimized = optimized_model(model)
    ops = [n.op_type for n in optimized.graph.node]
    assert ops.count("MatMulIntegerToFloat") == len(matmuls) and not [o for o in ops if o.startswith("QLinear")]
    assert "SkipLayerNormalization" not in ops  # ORT's session-time fusion left the Sum-form residuals alone
    report = check_cpu(model)
    assert not report.findings, report.lines()
    # The reference rounds with the ranges file's range (the test's, not the model's scale)
    # and per-column int8 weights from the float weight the rewritten graph multiplies by.
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    file_ranges = activation_ranges(ranges.tensors)
    names = [n.output[0] for n, _, _ in matmuls] + sorted({x for _, x, _ in matmuls})
    values = dict(zip(names, _run(model, names, fused=True)))
    for node, x_name, w_dq in matmuls:
        lo, hi = file_ranges[x_name] if x_name in file_ranges else _replayed(model, x_name)
        scale = np.float32((hi - lo) / 255)
        zero = np.clip(np.round(-lo / scale), 0, 255)
        x = values[x_name]
        xq = (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale
        w_scale = inits[w_dq.input[1]]
        w = inits[w_dq.input[0]].astype(np.float32) * w_scale
        assert w_scale.shape == (w.shape[1],)  # one scale per output column
        assert np.abs(inits[w_dq.input[0]]).max() <= 64  # 7 bits: no 16-bit saturation in AVX2's VPMADDUBSW
        want = xq @ w
        # float32 accumulation order differs (integer kernel vs NumPy) and a tie may round apart
        np.testing.assert_allclose(values[node.output[0]], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _replayed(model, tensor):
    """The range of a tensor PEG or SmoothQuant created (calibrated by replay): read back from its quantizer."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    scale, zero = float(inits[q.input[1]]), float(inits[q.input[2]])
    return -zero * scale, (255 - zero) * scale


def test_cpu_target_is_closer_to_fp32_than_every_activation_rounded(fp32, ranges):
    """Rounding only the MatMul inputs (outputs, residual sums, LayerNorm and softmax stay float) must lose
    less than W8A8 rounding every activation, with the same ranges. Compared on the encoder output: the
    tiny BERT's two logits project its noise onto two random directions. Measured on the encoder output:
    35 dB vs 34 (41 with 8-bit per-tensor weights: the 7 bits that keep AVX2's kernel exact cost ~6 dB
    on this random model, and ~0 to 0.3 GLUE points on MiniLM, bench/results/cpu-peers-minilm-l6.md)."""
    last = find_roles(fp32).tensor("layer.1.ffn.layernorm")
    (exact,) = _run(fp32, [last], fused=False)
    snr = {}
    for target in ("portable", "cpu"):
        model, _ = quantize(fp32, config_for("w8a8", target=target), ranges)
        snr[target] = sqnr_db(exact, _run(model, [last], fused=True)[0])
    assert snr["cpu"] > snr["portable"], snr


def test_portable_w8a8_is_unchanged_by_the_cpu_option(fp32, ranges):
    default, _ = quantize(fp32, config_for("w8a8"), ranges)
    portable, _ = quantize(fp32, config_for("w8a8", target="portable"), ranges)
    assert default.SerializeToString() == portable.SerializeToString()


def test_fused_cpu_graph_computes_what_the_unfused_qdq_graph_says(fp32, ranges):
    """The fusion (onnxscript's ORT fusions, then static QAttention) is an exact rewrite of the quantized graph:
    same uint8 inputs, same int8 weights; only float summation order and the masked keys' fill value
    (-10000 vs the float minimum, both exactly zero after the softmax) differ."""
    prepared = prepare(fp32)
    config = config_for("w8a8", target="cpu")
    plan = get_scheme("w8a8").plan(
        SchemeContext(config, model_fingerprint(fp32), prepared, find_roles(prepared), ranges)
    )
    fused, unfused = insert_qdq(plan), insert_qdq(replace(plan, fuse_cpu=False))
    ops = Counter(n.op_type for n in fused.graph.node)
    assert ops["QAttention"] == find_roles(fp32).num_layers
    # the residual sums stay Sum + LayerNormalization (vectorized in ORT), never SkipLayerNormalization
    assert ops["Sum"] == 2 * ops["QAttention"] and "SkipLayerNormalization" not in ops
    assert "Softmax" not in ops and "Transpose" not in ops
    feeds = Encoder.from_model(fp32).feeds(RAGGED_TEXTS)  # padded: the mask is exercised
    want = cpu_session(unfused, fused=False).run(None, feeds)[0]
    got = cpu_session(fused).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
