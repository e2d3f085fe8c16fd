"""Deployment targets: the strict QNN HTP check, EP-context compile, emulated eval, the CPU check.

HTP runs through onnxruntime-qnn's x86 emulator (no device). Models: the tiny
BERT at static shape 1x32, the packaged MiniLM-L6 at 1x128, and MiniLM-L6
fine-tuned in a fixture on an SST-2 sample at 1x64 (for prediction agreement).
Tests that need the plugin skip, with the install hint, when it is missing.
"""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnxruntime.quantization import QuantType

from qonnx_bert.analysis.emulate import evaluate_emulated
from qonnx_bert.calibration.calibrate import calibrate
from qonnx_bert.cli import main
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.metrics import sqnr_db
from qonnx_bert.core.modelinfo import read_info
from qonnx_bert.graph.prepare import prepare
from qonnx_bert.graph.static_indexing import constant_gather_nd
from qonnx_bert.inputs.export import export_model
from qonnx_bert.inputs.glue import load_task
from qonnx_bert.inputs.glue.tasks import limit_split
from qonnx_bert.inputs.sequences import sample_sequences, shipped_sentences
from qonnx_bert.passes.htp_rules import htp_edits, htp_overrides, mask_overrides
from qonnx_bert.passes.qdq import insert_qdq
from qonnx_bert.quantize import config_for, quantize
from qonnx_bert.quantize.schemes import SCHEMES, Plan, activation_ranges
from qonnx_bert.targets import qnn
from qonnx_bert.targets.cpu import check_cpu
from qonnx_bert.targets.htp_check import check_htp, compile_htp
from tests.conftest import SST2_SAMPLE, plant_gelu_outlier


def _has_qnn() -> bool:
    try:
        import onnxruntime_qnn  # noqa: F401
    except ImportError:
        return False
    return True


_SKIP_WITHOUT_QNN = pytest.mark.skipif(
    not _has_qnn(), reason='onnxruntime-qnn not installed: pip install "qonnx-bert[qnn]"'
)


def needs_qnn(test):
    """Marked ``qnn`` (``-m "not qnn"`` deselects it) and skipped, with the install hint, without the plugin."""
    return pytest.mark.qnn(_SKIP_WITHOUT_QNN(test))


SOCS = ("sm8650", "sa8295")  # HTP v75 and v68
SCHEME_OPTIONS = {"auto-mp": {"budget": 4}, "peg": {"groups": 3}, "peg-equal": {"groups": 4}}


def _w8a8(path, sequences: int = 8, scheme: str = "w8a8", **options) -> onnx.ModelProto:
    fp32 = onnx.load(str(path))
    ranges = calibrate(fp32, sample_sequences(shipped_sentences(), None, sequences, 0, "shipped"), progress=False)
    return quantize(fp32, config_for(scheme, **options), ranges)[0]


@pytest.fixture(scope="module")
def tiny_static(tiny_bert_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("qnn_tiny") / "tiny_1x32.onnx"
    export_model(str(tiny_bert_dir), path, static_shape=(1, 32))
    return path


@pytest.fixture(scope="module")
def tiny_w8a8(tiny_static):
    return _w8a8(tiny_static)


@pytest.fixture(scope="module")
def minilm_static(tmp_path_factory):
    path = tmp_path_factory.mktemp("qnn_minilm") / "minilm_1x128.onnx"
    export_model("minilm-l6", path, static_shape=(1, 128))
    return path


@pytest.fixture(scope="module")
def minilm_w8a8(minilm_static):
    return _w8a8(minilm_static, sequences=16)


def _finding_text(report) -> str:
    return "\n".join(f.line() for f in report.findings)


# --- the strict HTP check ---------------------------------------------------------------------


@needs_qnn
@pytest.mark.parametrize("soc", SOCS)
def test_tiny_w8a8_runs_whole_and_quantized_on_htp(tiny_w8a8, soc):
    report = check_htp(tiny_w8a8, qnn.resolve_soc(soc))
    assert report.ok, _finding_text(report)
    assert any(line.endswith("assigned to QNN, 0 to CPU") for line in report.summary), report.summary


@needs_qnn
@pytest.mark.slow
@pytest.mark.parametrize("soc", SOCS)
def test_minilm_w8a8_runs_whole_and_quantized_on_htp(minilm_w8a8, soc):
    report = check_htp(minilm_w8a8, qnn.resolve_soc(soc))
    assert report.ok, _finding_text(report)
    assert "bit-exactness on silicon" in report.unverified and "latency" in report.unverified


@needs_qnn
# smoothquant is for the CPU provider only (its config refuses target=portable).
@pytest.mark.parametrize("scheme", sorted(n for n in SCHEMES if n not in ("w8a32", "w32a8", "smoothquant")))
def test_every_scheme_is_htp_clean(tiny_static, scheme):
    report = check_htp(_w8a8(tiny_static, scheme=scheme, **SCHEME_OPTIONS.get(scheme, {})), qnn.resolve_soc("sm8650"))
    assert report.ok, _finding_text(report)


@needs_qnn
@pytest.mark.slow
@pytest.mark.parametrize("intermediate_groups", [1, 2])
def test_minilm_peg_runs_whole_and_quantized_on_htp(minilm_static, intermediate_groups):
    """Issue 7's acceptance: the default PEG (K=6, outlier-aware) on MiniLM-L6 at 1x128, fallback disabled;
    also with the GELU outputs split (MiniLM's layers 0-3 have a wide unit, so the split is made)."""
    peg = _w8a8(minilm_static, sequences=16, scheme="peg", permutation="model", intermediate_groups=intermediate_groups)
    assert sum(n.name.endswith(".peg.h") for n in peg.graph.node) == (0 if intermediate_groups == 1 else 4)
    report = check_htp(peg, qnn.resolve_soc("sm8650"))
    assert report.ok, _finding_text(report)


@needs_qnn
@pytest.mark.parametrize("soc", SOCS)
def test_peg_with_the_permutation_folded_is_htp_clean(tiny_static, soc):
    report = check_htp(_w8a8(tiny_static, scheme="peg", groups=3, permutation="model"), qnn.resolve_soc(soc))
    assert report.ok, _finding_text(report)


@needs_qnn
@pytest.mark.parametrize("soc", SOCS)
def test_peg_with_gelu_output_groups_is_htp_clean(tiny_static, soc):
    """The split GELU output: uint16 Gelu (its input converted up), a Split into per-group uint8."""
    fp32 = plant_gelu_outlier(onnx.load(str(tiny_static)))
    ranges = calibrate(fp32, sample_sequences(shipped_sentences(), None, 8, 0, "shipped"), progress=False)
    peg, _ = quantize(fp32, config_for("peg", groups=2, intermediate_groups=2), ranges)
    assert any(n.name == "layer0.peg.h" for n in peg.graph.node)
    report = check_htp(peg, qnn.resolve_soc(soc))
    assert report.ok, _finding_text(report)


@needs_qnn
def test_cpu_target_peg_fails_the_htp_check_and_says_why(tiny_static):
    report = check_htp(_w8a8(tiny_static, scheme="peg", groups=3, target="cpu"), qnn.resolve_soc("sm8650"))
    assert not report.ok
    assert any(f.node.endswith("peg.x") and "float" in f.problem for f in report.findings)  # the float Split
    assert any("quantize again with --target portable" in line for line in report.summary)


@needs_qnn
@pytest.mark.parametrize("granularity", ["per-channel", "per-tensor"])
def test_low_bit_embeddings_fail_the_htp_check_naming_the_table(tiny_static, granularity):
    """HTP's Gather keeps its table's encoding; a re-quantized (4-bit) table is named, with the fix."""
    model = _w8a8(tiny_static, scheme="peg", groups=2, embedding_bits=4, embedding_granularity=granularity)
    report = check_htp(model, qnn.resolve_soc("sm8650"))
    assert not report.ok
    gathers = [f for f in report.findings if f.op_type == "Gather"]
    assert len(gathers) == 1 and "embedding table" in gathers[0].problem, report.findings
    assert "8-bit embeddings" in gathers[0].fix


@needs_qnn
def test_int8_layernorm_gamma_fails_with_node_and_fix(tiny_static):
    fp32 = prepare(onnx.load(str(tiny_static)))
    ranges = calibrate(fp32, sample_sequences(shipped_sentences(), None, 8, 0, "shipped"), progress=False)
    gammas = {n.input[1] for n in fp32.graph.node if n.op_type == "LayerNormalization"}
    bad = {g: [{"quant_type": QuantType.QInt8, "symmetric": True}] for g in gammas}  # scheme overrides win
    model = insert_qdq(Plan(fp32, activation_ranges(ranges.tensors), overrides=bad))
    report = check_htp(model, qnn.resolve_soc("sm8650"))
    layernorms = [n.name for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert sorted(f.node for f in report.findings) == sorted(layernorms)
    assert all("LayerNorm gamma must be uint8" in f.fix and "3110" in f.problem for f in report.findings)


def unfuse_gelu(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each Gelu of a QDQ model as Div/Erf/Add/Mul/Mul with a Q/DQ pair after every op: an unfused GELU."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.initializer.extend(
        numpy_helper.from_array(np.array(v, np.float32), k)
        for k, v in (("c_sqrt2", 2**0.5), ("c_one", 1.0), ("c_half", 0.5))
    )
    quantizer = {n.input[0]: n for n in out.graph.node if n.op_type == "QuantizeLinear"}
    nodes = []
    for node in out.graph.node:
        if node.op_type != "Gelu":
            nodes.append(node)
            continue
        x, y, s = node.input[0], node.output[0], node.name
        scale, zp = quantizer[y].input[1:3]

        def op(kind, inputs, name):
            return [
                helper.make_node(kind, inputs, [name], name=f"{s}_{kind}_{name}"),
                helper.make_node("QuantizeLinear", [name, scale, zp], [name + "_q"]),
                helper.make_node("DequantizeLinear", [name + "_q", scale, zp], [name + "_dq"]),
            ]

        nodes += (
            op("Div", [x, "c_sqrt2"], s + "_d")
            + op("Erf", [s + "_d_dq"], s + "_e")
            + op("Add", [s + "_e_dq", "c_one"], s + "_a")
        )
        nodes += op("Mul", [x, s + "_a_dq"], s + "_m")
        nodes.append(helper.make_node("Mul", [s + "_m_dq", "c_half"], [y], name=f"{s}_half"))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


@needs_qnn
def test_unfused_gelu_fails_with_node_and_fix(tiny_w8a8, tmp_path, capsys):
    path = tmp_path / "erf.onnx"
    onnx.save(unfuse_gelu(tiny_w8a8), str(path))
    assert main(["check", str(path), "--ep", "qnn-htp", "--soc", "sm8650"]) == 1
    out = capsys.readouterr().out
    erf_lines = [line for line in out.splitlines() if "(Erf)" in line]
    assert len(erf_lines) == 2 and all("Erf: fuse GELU" in line and "assigned to CPU" in line for line in erf_lines)
    assert "not verified here: bit-exactness on silicon" in out


@needs_qnn
def test_int8_add_constant_runs_in_float_and_is_caught(tiny_static):
    bias = "bert.encoder.layer.0.intermediate.dense.bias"
    model = _w8a8(tiny_static)  # reference: clean
    fp32 = prepare(onnx.load(str(tiny_static)))
    ranges = calibrate(fp32, sample_sequences(shipped_sentences(), None, 8, 0, "shipped"), progress=False)
    bad = insert_qdq(
        Plan(
            fp32,
            activation_ranges(ranges.tensors),
            overrides={bias: [{"quant_type": QuantType.QInt8, "symmetric": True}]},
        )
    )
    assert check_htp(model, qnn.resolve_soc("sm8650")).ok
    report = check_htp(bad, qnn.resolve_soc("sm8650"))
    assert report.findings and all(
        "runs in float" in f.problem and "activation type (uint8" in f.fix for f in report.findings
    )


@needs_qnn
def test_per_channel_activation_is_a_graph_failure_with_fix(tiny_w8a8):
    model = onnx.ModelProto()
    model.CopyFrom(tiny_w8a8)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "layer_norm")
    width = 32  # hidden size: one scale per embedding dimension
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.full(width, inits[q.input[1]], np.float32), "pc_scale"),
            numpy_helper.from_array(np.full(width, inits[q.input[2]], np.uint8), "pc_zero_point"),
        ]
    )
    for node in model.graph.node:
        if node is q or (node.op_type == "DequantizeLinear" and node.input[0] == q.output[0]):
            node.input[1:3] = ["pc_scale", "pc_zero_point"]
            node.attribute.append(helper.make_attribute("axis", 2))
    report = check_htp(model, qnn.resolve_soc("sm8650"))
    assert [f.node for f in report.findings] == ["(graph)"]
    assert "error code 1000" in report.findings[0].problem and "per-tensor" in report.findings[0].fix


@needs_qnn
def test_cli_check_passes_and_lists_socs(tiny_w8a8, tmp_path, capsys):
    path = tmp_path / "tiny.w8a8.onnx"
    onnx.save(tiny_w8a8, str(path))
    assert main(["check", str(path), "--ep", "qnn-htp", "--soc", "sa8295"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out.splitlines()[0] and "HTP v68" in out
    assert main(["check", "--soc", "list"]) == 0
    assert "sm8650   soc_model=57" in capsys.readouterr().out


# --- EP-context compile and emulated inference ---------------------------------------------------


@needs_qnn
@pytest.mark.slow
def test_compile_writes_stub_and_binary_that_run(minilm_w8a8, tmp_path):
    report, compiled = compile_htp(minilm_w8a8, qnn.resolve_soc("sm8650"), tmp_path / "out", "minilm")
    assert report.ok and compiled is not None
    assert compiled.stub == tmp_path / "out" / "minilm_ctx.onnx" and compiled.stub.is_file()
    assert [p.name for p in compiled.binaries] == ["minilm_ctx_qnn.bin"] and compiled.binaries[0].stat().st_size > 1e6
    stub = onnx.load(str(compiled.stub))
    assert [n.op_type for n in stub.graph.node] == ["EPContext"]
    assert read_info(stub).static_shape == (1, 128)  # the tokenizer metadata travels with the stub
    session = qnn.htp_session(compiled.stub, qnn.resolve_soc("sm8650"))  # by path: the stub names its .bin
    feeds = {i.name: np.zeros((1, 128), np.int64) for i in session.get_inputs()}
    assert session.run(None, feeds)[0].shape == (1, 2)


@needs_qnn
def test_compile_writes_nothing_when_the_check_fails(tiny_w8a8, tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    onnx.save(unfuse_gelu(tiny_w8a8), str(bad))
    assert main(["compile", str(bad), "--ep", "qnn-htp", "--soc", "sm8650", "-o", str(tmp_path / "out")]) == 1
    assert "Erf: fuse GELU" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()  # not even the folder: a failed run leaves no empty folder
    assert main(["compile", str(bad), "--ep", "cpu", "-o", str(tmp_path / "out")]) == 2
    assert "compile supports --ep qnn-htp only" in capsys.readouterr().err


@needs_qnn
@pytest.mark.parametrize(
    "scheme, options",
    [
        ("w8a8", {}),
        ("peg", {"groups": 3}),
        ("peg", {"groups": 3, "permutation": "layer"}),
        ("peg-equal", {"groups": 4}),
    ],
)
def test_emulated_eval_agrees_with_cpu_provider(tiny_static, tiny_w8a8, glue_dir, scheme, options):
    model = tiny_w8a8 if scheme == "w8a8" else _w8a8(tiny_static, scheme=scheme, **options)
    split = load_task("rte", "dev", glue_dir)
    result = evaluate_emulated(model, split, qnn.resolve_soc("sm8650"), progress=False)
    assert result.agreement >= 0.95
    # The emulator's integer kernels differ from the CPU provider's by ~1 uint8 step per op: far below the signal
    # (measured 33-50 dB; a Gather between the LayerNorm and PEG's Split once made it 10-17 dB).
    assert sqnr_db(result.cpu.logits, result.htp.logits) > 25.0
    assert set(result.htp.metrics) == set(result.cpu.metrics)


@needs_qnn
@pytest.mark.slow
def test_minilm_emulated_eval_runs_through_cli(minilm_w8a8, glue_dir, tmp_path, capsys):
    path = tmp_path / "minilm.w8a8.onnx"
    onnx.save(minilm_w8a8, str(path))
    args = [
        "eval",
        str(path),
        "--task",
        "rte",
        "--data-dir",
        str(glue_dir),
        "--ep",
        "qnn-htp",
        "--soc",
        "sm8650",
        "--limit",
        "4",
    ]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "QNN HTP sm8650, emulated" in lines[0] and "ONNX Runtime CPU" in lines[1]
    assert "same prediction on" in lines[2] and "s/sequence" in lines[2]
    assert lines[3].startswith("CPU provider's integer kernels vs the same QDQ graph computed in float: ")


# Two correct implementations of one quantized model never agree bit for bit: a value they round
# to neighbouring steps is one step off, and six layers of requantization grow that to about the
# model's quantization noise. The CPU provider's own integer kernels against the same QDQ graph
# computed in float set that floor. Measured on the 128 dev sentences (sm8650), HTP vs CPU / CPU
# integer vs float: w8a8 93.8% / 94.5%, mp 97.7% / 98.4%, peg 98.4% / 98.4%; the test runs the first 64
# (w8a8 95.3% / 96.9%, mp 100% / 98.4%, peg 100% / 100%): the emulator takes about a second a
# sentence, and CI has 20 minutes. W8A8 is fragile on both
# runtimes (MiniLM's outliers stretch its per-tensor grids), so the 95% is not reachable for it
# by any implementation that is not bit-exact with ORT's kernels; HTP drifts no more than the floor.
@needs_qnn
@pytest.mark.slow
@pytest.mark.parametrize("scheme, floor", [("w8a8", 0.90), ("mp", 0.95), ("peg", 0.95)])
def test_fine_tuned_minilm_predicts_the_same_on_htp_and_cpu(minilm_sst2_static, scheme, floor):
    from qonnx_bert.inputs.sequences import glue_train_sequences

    fp32 = onnx.load(str(minilm_sst2_static))
    ranges = calibrate(fp32, glue_train_sequences("sst2", SST2_SAMPLE, 32, 0), progress=False)
    model, _ = quantize(fp32, config_for(scheme), ranges)
    split = limit_split(load_task("sst2", "dev", SST2_SAMPLE), 64)
    result = evaluate_emulated(model, split, qnn.resolve_soc("sm8650"), progress=False)
    assert result.agreement >= floor
    assert result.agreement >= result.cpu_self_agreement - 0.02


# --- the CPU check -----------------------------------------------------------------------------


def test_cpu_check_reports_integer_kernels_and_float_units(tiny_w8a8):
    report = check_cpu(tiny_w8a8)
    assert report.ok
    text = "\n".join(report.summary)
    assert "QLinearMatMul x16" in text and "MatMul: 16 of 16 QDQ units" in text
    assert "LayerNormalization: 0 of 5" in text  # no integer LayerNorm kernel on CPU: reported, not failed


def test_cpu_check_of_a_model_ort_cannot_load_is_one_line(tiny_w8a8, tmp_path, capsys):
    broken = onnx.ModelProto()
    broken.CopyFrom(tiny_w8a8)
    ids = next(i for i in broken.graph.input if i.name == "input_ids")
    ids.type.tensor_type.elem_type = onnx.TensorProto.FLOAT  # Gather indices must be integers: ill-typed
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    before = (tmp_path / "broken.onnx").read_bytes()
    assert main(["check", str(tmp_path / "broken.onnx"), "--ep", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot load it" in err and "qonnx quantize" in err and len(err.splitlines()) == 1
    assert (tmp_path / "broken.onnx").read_bytes() == before


# --- the HTP rules in the QDQ writer -------------------------------------------------------------


def test_htp_rules_gamma_uint8_and_bias_in_activation_type(tiny_static):
    model, _, rules = htp_edits(
        prepare(onnx.load(str(tiny_static)))
    )  # unshares the exporter's deduplicated zero biases
    add = next(
        n for n in model.graph.node if n.op_type == "Add" and n.input[1] in {i.name for i in model.graph.initializer}
    )
    gamma = next(n.input[1] for n in model.graph.node if n.op_type == "LayerNormalization")
    assert (
        rules[gamma][0]["quant_type"] == QuantType.QUInt8 and rules[add.input[1]][0]["quant_type"] == QuantType.QUInt8
    )
    wide = htp_overrides(model, {add.output[0]: [{"quant_type": QuantType.QUInt16}]})
    assert wide[add.input[1]][0]["quant_type"] == QuantType.QUInt16  # a bias under 16-bit activations is 16-bit
    assert wide[gamma][0]["quant_type"] == QuantType.QUInt8  # gamma stays uint8 (u16 gamma: error 3110)


@pytest.mark.parametrize("indices", [[[0, 0], [0, 1], [0, 2]], [[0, 2], [0, 0], [0, 1]]])
def test_constant_gather_nd_rewrite_is_exact(indices):
    idx = numpy_helper.from_array(np.array([indices], np.int64), "idx")
    graph = helper.make_graph(
        [helper.make_node("GatherND", ["x", "idx"], ["y"], name="g")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [idx],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert constant_gather_nd(rewritten) == 1 and "GatherND" not in {n.op_type for n in rewritten.graph.node}
    import onnxruntime as ort

    x = {"x": np.array([[1.0, 2.0, 3.0]], np.float32)}
    run = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
        for m in (model, rewritten)
    ]
    np.testing.assert_array_equal(run[0], run[1])


def test_mask_range_still_clamps_masked_scores(tiny_static):
    model = prepare(onnx.load(str(tiny_static)))
    ranges = activation_ranges(
        calibrate(model, sample_sequences(shipped_sentences(), None, 8, 0, "shipped"), progress=False).tensors
    )
    narrowed = mask_overrides(model, ranges)
    assert len(narrowed) == 1
    ((mask, [entry]),) = narrowed.items()
    for node in (n for n in model.graph.node if n.op_type == "Add" and mask in n.input):
        scores = next(i for i in node.input if i != mask)
        assert ranges[scores][1] + entry["rmin"] <= ranges[node.output[0]][0]  # a masked score lands below the grid


# --- bad input ---------------------------------------------------------------------------------


def test_float_and_weight_only_models_are_refused(tiny_static):
    fp32 = onnx.load(str(tiny_static))
    with pytest.raises(UsageError, match="no activation QuantizeLinear.*qonnx quantize"):
        check_htp(fp32, qnn.resolve_soc("sm8650"))
    with pytest.raises(UsageError, match="no activation QuantizeLinear"):
        check_htp(quantize(fp32, config_for("w8a32"), None)[0], qnn.resolve_soc("sm8650"))
    with pytest.raises(UsageError, match="no QDQ node units"):
        check_cpu(fp32)


def test_dynamic_shapes_are_refused_for_htp(tiny_w8a8):
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(tiny_w8a8)
    dynamic.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "sequence"
    with pytest.raises(UsageError, match=r"input input_ids has dynamic shape \[1, 'sequence'\].*--static-shape 1,128"):
        check_htp(dynamic, qnn.resolve_soc("sm8650"))


def test_unknown_ep_and_soc(tiny_static, capsys):
    assert main(["check", str(tiny_static), "--ep", "tensorrt"]) == 2
    assert "unknown execution provider 'tensorrt'; choose one of: qnn-htp, cpu" in capsys.readouterr().err
    with pytest.raises(UsageError, match="unknown SoC 'sm9999'.*`soc=list`"):
        qnn.resolve_soc("sm9999")
    assert qnn.resolve_soc("57").name == "sm8650" and qnn.resolve_soc("SM8650").arch == "v75"


def test_missing_plugin_gives_install_hint(monkeypatch, tiny_w8a8):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime_qnn", None)  # import fails
    monkeypatch.setattr(qnn, "_DEVICES", [])
    with pytest.raises(UsageError, match=r'onnxruntime-qnn, which is not installed: pip install "qonnx-bert\[qnn\]"'):
        check_htp(tiny_w8a8, qnn.resolve_soc("sm8650"))


def test_htp_edits_copy_a_shared_large_constant_as_a_stub_filled_from_the_original():
    """A large float constant shared by two elementwise ops: the weightless copy gets a stub per use, and
    ``with_weights`` fills each from the original's values (the fix never holds the weights twice)."""
    from qonnx_bert.graph.weightless import is_stub, with_weights

    big = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(1, 4096), "big")
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "big"], ["y"], name="a"),
            helper.make_node("Mul", ["y", "big"], ["z"], name="m"),
        ],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4096])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 4096])],
        [big],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    light, copies, _ = htp_edits(model)
    assert sorted(copies.values()) == ["big", "big"] and all(
        is_stub(i) for i in light.graph.initializer if i.name in copies
    )
    filled = with_weights(light, model, copies)
    values = {i.name: numpy_helper.to_array(i) for i in filled.graph.initializer}
    for copy in copies:
        np.testing.assert_array_equal(values[copy], numpy_helper.to_array(big))
    assert model.graph.initializer[0].name == "big" and len(model.graph.initializer) == 1  # the input is untouched
