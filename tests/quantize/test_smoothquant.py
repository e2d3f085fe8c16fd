"""``smoothquant``: SmoothQuant's per-channel smoothing of MatMul inputs, lowered for the CPU provider.

References: the factor is checked against SmoothQuant's formula written out in NumPy; the smoothed
FP32 graph against the original graph in ONNX Runtime (the rewrite must be exact up to float
rounding); the quantized model against FP32 and against plain ``w8a8 --target cpu`` with the same
ranges on a model with a planted outlier channel (what smoothing is for). The integer kernels'
arithmetic is checked against NumPy in ``test_cpu_target.py``, which runs smoothquant too.
"""

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from qonnx_bert.calibration.calibrate import calibrate
from qonnx_bert.calibration.ranges import model_fingerprint
from qonnx_bert.cli import main
from qonnx_bert.core.metrics import sqnr_db
from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.graph.prepare import prepare
from qonnx_bert.graph.roles import find_roles
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.sequences import sample_sequences, shipped_sentences
from qonnx_bert.passes.qdq import insert_qdq
from qonnx_bert.passes.smooth import MIN_SCALE, smoothed_name, smoothing_scales, smoothing_sites
from qonnx_bert.quantize import config_for, quantize
from qonnx_bert.quantize.schemes import SchemeContext, get_scheme
from qonnx_bert.quantize.schemes.replay import calibration_feeds, logits_on
from qonnx_bert.quantize.schemes.smooth import ALPHA_GRID
from qonnx_bert.targets.cpu import check_cpu
from tests.conftest import RAGGED_TEXTS, assert_models_close, ffn_dense, with_edited_initializers


def test_factor_is_smoothquants_formula():
    rng = np.random.default_rng(0)
    a, w = rng.uniform(0.01, 50, 64), rng.uniform(0.001, 2, 64)
    a[3], w[5] = 0.0, 0.0  # a channel that never fires; a weight row of zeros
    for alpha in (0.0, 0.5, 0.8, 1.0):
        want = np.maximum(a**alpha / np.maximum(w, MIN_SCALE) ** (1 - alpha), MIN_SCALE)
        np.testing.assert_allclose(smoothing_scales(a, w, alpha), want, rtol=1e-6)  # float32 result
    assert smoothing_scales(a, w, 0.5)[3] == pytest.approx(MIN_SCALE)


def _plan(model, ranges, alpha=0.5):
    prepared = prepare(model)
    config = config_for("smoothquant", alpha=alpha)
    return get_scheme("smoothquant").plan(
        SchemeContext(config, model_fingerprint(model), prepared, find_roles(prepared), ranges)
    )


def test_smoothed_fp32_graph_equals_the_original(fp32, ranges):
    """x W = (x / s)(diag(s) W): every weighted MatMul reads its smoothed input, and the FP32 outputs agree to
    float32 rounding (a multiply and a divide per element, relative error ~1e-7 each, through two layers)."""
    plan = _plan(fp32, ranges)
    inits = {i.name: numpy_helper.to_array(i) for i in plan.model.graph.initializer}
    weighted = [n for n in plan.model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert weighted and all(n.input[0].endswith(".smoothed") for n in weighted)
    assert plan.metadata == {"qonnx.target": "cpu"} and plan.fuse_cpu
    feeds = [Encoder.from_model(fp32).feeds(RAGGED_TEXTS)]
    scale = np.abs(cpu_session(fp32).run(None, feeds[0])[0]).max()
    assert_models_close(prepare(fp32), plan.model, feeds, atol=1e-5 * scale)


def plant_gelu_unit_outlier(model, layer: int = 0, units=(3, 11), factor: float = 30.0):
    """A copy where GELU units ``units`` of ``layer`` (the FFN's second MatMul input) are about ``factor`` x wider
    (their W1 columns and b1 entries scaled) and their W2 rows ``factor`` x smaller: the FFN output barely moves,
    but its second MatMul reads an input with outlier channels, as MiniLM's does."""
    (w1, b1), (w2, _) = ffn_dense(model, layer)

    def wider(values):
        values[..., list(units)] *= factor
        return values

    def narrower_rows(values):
        values[list(units)] /= factor
        return values

    return with_edited_initializers(model, {w1: wider, b1: wider, w2: narrower_rows})


def test_smoothing_removes_a_planted_outlier_channel_and_beats_plain_w8a8_cpu(fp32):
    """Two GELU units 30x wider than the rest: plain per-tensor uint8 spends the second MatMul's input grid on
    them; smoothing divides them down and moves the factor into their weight rows. Compared on that MatMul's
    output (a random-weight FFN adds little to the residual stream, so the encoder output would hide it),
    both models quantized with the same ranges file, unfused so the tensor keeps its name."""
    planted = plant_gelu_unit_outlier(fp32)
    ranges = calibrate(planted, sample_sequences(shipped_sentences(), None, 32, 0, "shipped"), progress=False)
    prepared = prepare(planted)
    roles = find_roles(prepared)
    producer = {o: n for n in prepared.graph.node for o in n.output}
    bias_add = producer[roles.tensor("layer.0.ffn.output")]
    product = next(i for i in bias_add.input if i in producer and producer[i].op_type == "MatMul")
    feeds = Encoder.from_model(planted).feeds(shipped_sentences()[32:56])
    snr, plans = {}, {}
    for scheme in ("w8a8", "smoothquant"):
        config = config_for(scheme, target="cpu")
        plans[scheme] = get_scheme(scheme).plan(
            SchemeContext(config, model_fingerprint(planted), prepared, roles, ranges)
        )
        model = insert_qdq(replace(plans[scheme], fuse_cpu=False))
        model.graph.output.append(helper.make_empty_tensor_value_info(product))
        snr[scheme] = sqnr_db(_values(prepared, product, feeds), cpu_session(model).run([product], feeds)[0])
    assert snr["smoothquant"] > snr["w8a8"] + 10.0, snr  # measured 12 dB vs 30
    assert "SmoothQuant alpha=0.75" in plans["smoothquant"].notes[0]
    model, _ = quantize(planted, config_for("smoothquant"), ranges)
    assert not check_cpu(model).findings  # fused: every MatMul an integer kernel


def test_alpha_auto_picks_the_grid_value_closest_to_fp32_and_reports_what_deployment_computes(fp32):
    """The search compares unfused candidates; the model it returns (fused) must score what the note says."""
    planted = plant_gelu_unit_outlier(fp32)
    ranges = calibrate(planted, sample_sequences(shipped_sentences(), None, 16, 0, "shipped"), progress=False)
    model, report = quantize(planted, config_for("smoothquant", alpha="auto"), ranges)
    note = next(line for line in report.lines() if line.startswith("alpha auto: chose "))
    chosen = float(note.split()[3])
    tried = dict(part.rsplit(" ", 2)[:2] for part in note.split(": ", 2)[2].rstrip(")").split(", "))
    scores = {float(a): float(db) for a, db in tried.items()}
    assert list(scores) == list(ALPHA_GRID) and scores[chosen] == max(scores.values())
    assert f"SmoothQuant alpha={chosen:g}:" in report.lines()[1]
    feeds = calibration_feeds(planted, ranges)
    deployed = sqnr_db(logits_on(prepare(planted), feeds), logits_on(model, feeds))
    assert deployed == pytest.approx(scores[chosen], abs=0.15)  # fused vs unfused: float summation order only


def _values(model, tensor, feeds):
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(helper.make_empty_tensor_value_info(tensor))
    return cpu_session(exposed).run([tensor], feeds)[0]


def test_a_shared_weight_is_not_smoothed():
    """ALBERT's layers read one weight: scaling its rows for one reader would change the others. (``qonnx``'s
    commands copy shared weights per reader when they canonicalize; the Python API takes a model as given.)"""
    w_shared = numpy_helper.from_array(np.ones((4, 4), np.float32), "w_shared")
    w_own = numpy_helper.from_array(np.ones((4, 4), np.float32), "w_own")
    nodes = [
        helper.make_node("MatMul", ["x", "w_shared"], ["y1"]),
        helper.make_node("MatMul", ["y1", "w_shared"], ["y2"]),
        helper.make_node("MatMul", ["y2", "w_own"], ["y3"]),
    ]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "g", [value("x", 1, [2, 4])], [value("y3", 1, [2, 4])], initializer=[w_shared, w_own]
    )
    sites, shared = smoothing_sites(helper.make_model(graph))
    assert [(s.tensor, s.matmuls) for s in sites] == [("y2", ("y3",))]
    assert shared == ["x", "y1"]
    assert smoothed_name("y2") == "y2.smoothed"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--target", "portable"], "--target is portable; smoothquant is for the CPU provider only"),
        (["--alpha", "1.5"], "--alpha is 1.5; give a number in [0, 1]"),
        (["--alpha", "best"], "'best' is neither a number in [0, 1] (0.75) nor auto"),
    ],
)
def test_bad_settings_are_refused_in_one_line(tiny_onnx, ranges, tmp_path, capsys, flags, message):
    ranges.save(tmp_path / "r.json")
    out = tmp_path / "sq.onnx"
    argv = ["quantize", str(tiny_onnx), "--scheme", "smoothquant", "--ranges", str(tmp_path / "r.json"), "-o", str(out)]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()
