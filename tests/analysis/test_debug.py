"""``qonnx debug``: per-role SQNR/MSE of a quantized model against FP32, checked against NumPy."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qonnx_bert.analysis.debug import ABSENT, FLOAT, QUANTIZED, compare
from qonnx_bert.cli import main
from qonnx_bert.core.modelinfo import PERMUTED_KEY, permuted_record
from qonnx_bert.graph.prepare import prepare
from qonnx_bert.graph.roles import find_roles
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.sequences import first_sequences


@pytest.fixture(scope="module")
def models(tiny_onnx, glue_dir):
    from qonnx_bert.calibration.calibrate import calibrate
    from qonnx_bert.inputs.sequences import glue_train_sequences
    from qonnx_bert.quantize import config_for, quantize

    fp32 = onnx.load(str(tiny_onnx))
    ranges = calibrate(fp32, glue_train_sequences("rte", glue_dir, 16, 0), progress=False)
    return fp32, {s: quantize(fp32, config_for(s), ranges)[0] for s in ("w8a8", "w8a32", "peg")}


def _run(model: onnx.ModelProto, name: str, feeds: list[dict]) -> np.ndarray:
    """``name`` over every feed, flattened, by a plain ORT session of our own."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([name], f)[0].reshape(-1) for f in feeds]).astype(np.float64)


def test_sqnr_and_mse_equal_a_numpy_computation(models):
    fp32, quantized = models
    sequences = first_sequences(3)
    errors = {e.role: e for e in compare(fp32, quantized["w8a8"], sequences)}
    feeds = [Encoder.from_model(fp32).feeds([text]) for text in sequences.texts_a]  # one sequence each: no padding
    for role in ("layer.1.ffn.residual_sum", "layer.0.attention.softmax_output", "output"):
        tensor = find_roles(prepare(fp32)).roles[role]
        ref = _run(prepare(fp32), tensor, feeds)
        before = _run(quantized["w8a8"], tensor if role != "output" else tensor + "_QuantizeLinear_Input", feeds)
        after = _run(
            quantized["w8a8"], tensor if role == "output" else tensor + "_DequantizeLinear_Output", feeds
        )  # ORT's names
        e = errors[role]
        assert e.status == QUANTIZED and e.bits == 8
        assert e.sqnr_db == pytest.approx(10 * np.log10(np.sum(ref**2) / np.sum((ref - after) ** 2)), rel=1e-9)
        assert e.mse == pytest.approx(np.mean((ref - after) ** 2), rel=1e-9)
        assert e.quantizer_sqnr_db == pytest.approx(
            10 * np.log10(np.sum(before**2) / np.sum((before - after) ** 2)), rel=1e-9
        )


def test_rows_are_worst_first_float_and_absent_roles_marked(models):
    fp32, quantized = models
    sequences = first_sequences(2)
    ranked = compare(fp32, quantized["w8a8"], sequences)
    sqnrs = [e.sqnr_db for e in ranked]
    assert sqnrs == sorted(sqnrs) and len(ranked) == len(set(find_roles(prepare(fp32)).roles.values()))
    weights_only = compare(fp32, quantized["w8a32"], sequences)
    assert {e.status for e in weights_only} == {FLOAT} and all(e.quantizer_sqnr_db is None for e in weights_only)
    assert all(np.isfinite(e.sqnr_db) for e in weights_only)  # the weights' error reaches every tensor
    peg = compare(fp32, quantized["peg"], sequences)
    absent = [e.role for e in peg if e.status == ABSENT]
    assert sorted(absent) == ["layer.0.ffn.output", "layer.1.ffn.output"]  # split into groups by the PEG rewrite
    assert [e.status for e in peg[-2:]] == [ABSENT, ABSENT] and peg[-1].sqnr_db is None
    # peg folds a permutation into the weights: compared in the model's own order, its stream is as close
    # to FP32 as W8A8's (measured ~33 dB on the tiny BERT; in the wrong order it would be about -3 dB)
    w8a8 = {e.role: e.sqnr_db for e in ranked}
    assert all(e.sqnr_db > w8a8[e.role] - 6 for e in peg if e.role.startswith("layer.1.ffn") and e.sqnr_db is not None)


def test_permuted_tensors_are_compared_in_the_models_order(fp32_and_folded):
    """A model whose residual stream is permuted (PEG folds one order into the weights) is FP32-exact:
    with the permutation recorded, every role matches to float rounding; unrecorded, the stream looks like noise."""
    fp32, folded, record = fp32_and_folded
    sequences = first_sequences(2)
    blind = {e.role: e.sqnr_db for e in compare(fp32, folded, sequences)}
    assert blind["layer.0.ffn.residual_sum"] < 3  # the same values in another order: about -3 dB
    folded.metadata_props.add(key=PERMUTED_KEY, value=permuted_record(record))
    errors = compare(fp32, folded, sequences)
    assert all(e.status == FLOAT and e.sqnr_db > 60 for e in errors), [
        (e.role, e.sqnr_db) for e in errors if e.sqnr_db <= 60
    ]


@pytest.fixture(scope="module")
def fp32_and_folded(tiny_onnx):
    import onnx_ir as ir

    from qonnx_bert.passes.permute_stream import permute_stream

    fp32 = onnx.load(str(tiny_onnx))
    prepared = prepare(fp32)
    model = ir.from_proto(prepared)
    values = {v.name: v for n in model.graph for v in n.outputs}
    perm = np.random.default_rng(0).permutation(32)
    moved = permute_stream(model.graph, values[find_roles(prepared).tensor("embeddings.layernorm")], perm)
    return fp32, ir.to_proto(model), dict.fromkeys(moved, perm)


def test_cli_prints_the_table_and_writes_plot_and_table(models, tiny_onnx, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    quant = tmp_path / "w8a8.onnx"
    onnx.save(models[1]["w8a8"], str(quant))
    plot = tmp_path / "plots" / "debug.png"
    assert main(["debug", str(tiny_onnx), str(quant), "-n", "2", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "| role | tensor | quantized | SQNR dB (vs FP32) | MSE | quantizer SQNR dB |" in out
    assert plot.read_bytes()[:4] == b"\x89PNG" and plot.stat().st_size > 5000
    assert "| layer.1.ffn.residual_sum |" in plot.with_suffix(".md").read_text()
    assert main(["debug", str(tiny_onnx), str(quant), "-n", "0"]) == 2
