"""int16 mixed precision by role: exact selection, legal 8/16 boundaries, mp and auto-mp, bad input."""

import json
from collections import defaultdict

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.quantization import QuantType

from qonnx_bert.calibration.estimators import PerTensor, make_estimator
from qonnx_bert.calibration.ranges import model_fingerprint
from qonnx_bert.cli import main
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.metrics import sqnr_db
from qonnx_bert.graph.prepare import prepare
from qonnx_bert.graph.roles import find_roles
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.sequences import shipped_sentences
from qonnx_bert.passes.mixed_precision import with_quantizer_bits
from qonnx_bert.passes.qdq import insert_qdq
from qonnx_bert.quantize import config_for, quantize
from qonnx_bert.quantize.schemes import Plan, SchemeContext, activation_ranges, get_scheme
from qonnx_bert.quantize.schemes.mixed import CPU_NOTE, model_record, save_selection
from qonnx_bert.quantize.schemes.replay import calibration_feeds, logits_on

BITS = {onnx.TensorProto.UINT8: 8, onnx.TensorProto.UINT16: 16}
QDQ = ("QuantizeLinear", "DequantizeLinear")
TEXTS = shipped_sentences()[32:]


@pytest.fixture(scope="module")
def roles(fp32):
    return find_roles(fp32)


def _graph(model):
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    return inits, producers, consumers


def _activation_dq(name, inits, producers):
    """The DequantizeLinear producing ``name`` from an activation (not a constant weight), or None."""
    node = producers.get(name)
    return node if node is not None and node.op_type == "DequantizeLinear" and node.input[0] not in inits else None


def consumed_bits(model) -> dict[str, set[int]]:
    """Float tensor -> the bit-widths its readers see (the narrowest Q along each DQ->Q->DQ chain)."""
    inits, producers, _ = _graph(model)
    seen = defaultdict(set)
    readers = [n.input for n in model.graph.node if n.op_type not in QDQ] + [[o.name for o in model.graph.output]]
    for name in (i for inputs in readers for i in inputs):
        bits = []
        while (dq := _activation_dq(name, inits, producers)) is not None:
            bits.append(BITS[inits[dq.input[2]].data_type])
            name = producers[dq.input[0]].input[0]
        if bits:
            seen[name.removesuffix("_QuantizeLinear_Input")].add(min(bits))
    return dict(seen)


def mixed_nodes(model) -> list[str]:
    """Nodes whose dequantized activation inputs and quantized outputs are not all of one type."""
    inits, producers, consumers = _graph(model)
    bad = []
    for node in (n for n in model.graph.node if n.op_type not in QDQ):
        dqs = [_activation_dq(i, inits, producers) for i in node.input]
        qs = [c for o in node.output for c in consumers[o] if c.op_type == "QuantizeLinear"]
        types = {inits[q.input[2]].data_type for q in [*filter(None, dqs), *qs]}
        if len(types) > 1:
            bad.append(node.name)
    return bad


def requantizations(model) -> int:
    """QuantizeLinear nodes fed by a DequantizeLinear: the DQ->Q converts between 8 and 16 bits."""
    _, producers, _ = _graph(model)
    return sum(
        n.op_type == "QuantizeLinear" and getattr(producers.get(n.input[0]), "op_type", "") == "DequantizeLinear"
        for n in model.graph.node
    )


def _run(model):
    """Output 0 on the CPU provider, one sequence at a time (no padding), flattened."""
    enc, sess = (
        Encoder.from_model(model),
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]),
    )
    return np.concatenate([sess.run(None, enc.feeds([t]))[0].reshape(-1) for t in TEXTS])


def _dequantized(model, tensor):
    """``model`` with output 0 the value of ``tensor`` as its readers see it (through its own Q/DQ, if any)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _, _, consumers = _graph(out)
    q = next((n for n in consumers[tensor] if n.op_type == "QuantizeLinear"), None)
    if q is not None:
        tensor = next(n for n in consumers[q.output[0]] if n.op_type == "DequantizeLinear").output[0]
    out.graph.output.insert(0, onnx.helper.make_empty_tensor_value_info(tensor))
    return out


def _tensors(roles, *role_names):
    return {roles.tensor(r) for r in role_names}


def test_pattern_selects_exactly_its_tensors(fp32, roles, ranges):
    model, report = quantize(fp32, config_for("w8a8", int16=["layer.*.ffn.residual_sum", "output"]), ranges)
    wanted = _tensors(roles, "layer.0.ffn.residual_sum", "layer.1.ffn.residual_sum", "output")
    bits = consumed_bits(model)
    assert {t for t, b in bits.items() if b == {16}} == wanted
    assert all(b == {8} for t, b in bits.items() if t not in wanted)
    assert "16-bit: 3 of 34 activations" in "\n".join(report.lines())
    assert CPU_NOTE in report.lines()
    assert np.isfinite(_run(model)).all()


@pytest.mark.parametrize(
    "patterns", [["layer.*.ffn.residual_sum"], ["layer.0.attention.*"], ["layer.1.ffn.gelu", "pooler.output"], ["*"]]
)
def test_every_boundary_is_requantized(fp32, ranges, patterns):
    model, report = quantize(fp32, config_for("w8a8", int16=patterns), ranges)
    assert mixed_nodes(model) == []
    assert requantizations(model) > 0 and report.activation_bits[16] > 0
    assert np.isfinite(_run(model)).all()


def test_raw_16bit_overrides_leave_mixed_nodes(fp32, roles, ranges):
    """The checker's negative case: a uint16 request without the fixer leaves ops with mixed types."""
    prepared = prepare(fp32)
    tensor = roles.tensor("layer.0.ffn.residual_sum")
    plan = Plan(prepared, activation_ranges(ranges.tensors), overrides={tensor: [{"quant_type": QuantType.QUInt16}]})
    assert mixed_nodes(insert_qdq(plan))


def test_all_roles_in_16bit_beat_w8a8(fp32, roles, ranges):
    # The tiny random BERT's two logits barely depend on the input, so their SQNR is dominated by
    # how a few error terms happen to project on the classifier; the encoder output is the signal.
    last = roles.tensor(f"layer.{roles.num_layers - 1}.ffn.layernorm")
    ref = _run(_dequantized(fp32, last))
    w8a8, _ = quantize(fp32, config_for("w8a8"), ranges)
    wide, _ = quantize(fp32, config_for("w8a8", int16=["*"]), ranges)
    assert sqnr_db(ref, _run(_dequantized(wide, last))) > sqnr_db(ref, _run(_dequantized(w8a8, last))) + 3.0


def _producer_input(model, tensor, k=0):
    return next(n for n in model.graph.node if tensor in n.output).input[k]


def test_a_role_is_widened_with_its_pre_bias_and_reshaped_copies(fp32, roles, ranges):
    """A Linear exports as MatMul + Add(bias) and heads as Reshape/Transpose: 16 bits must reach the next op."""
    model, _ = quantize(fp32, config_for("w8a8", int16=["layer.0.attention.query", "layer.1.ffn.output"]), ranges)
    bits = consumed_bits(model)
    q_of_scores = _producer_input(fp32, roles.tensor("layer.0.attention.scores"))
    pre_bias = _producer_input(fp32, roles.tensor("layer.1.ffn.output"))
    assert bits[q_of_scores] == {16} and bits[pre_bias] == {16}
    assert mixed_nodes(model) == []


def test_mp_keeps_the_papers_roles_and_reestimates_the_output(fp32, roles, ranges):
    model, report = quantize(fp32, config_for("mp"), ranges)
    ffn = [f"layer.{i}.ffn.{r}" for i in range(2) for r in ("input", "output", "residual_sum")]
    pre_bias = {_producer_input(fp32, roles.tensor(f"layer.{i}.ffn.output")) for i in range(2)}
    assert {t for t, b in consumed_bits(model).items() if b == {16}} == _tensors(roles, "output", *ffn) | pre_bias
    assert mixed_nodes(model) == []
    assert "16-bit: 7 of 34 activations" in "\n".join(report.lines())
    ctx = SchemeContext(config_for("mp"), model_fingerprint(fp32), prepare(fp32), roles, ranges)
    entry = get_scheme("mp").plan(ctx).overrides[roles.tensor("output")][0]
    estimator = make_estimator("mse:bits=16", PerTensor())
    estimator.update(logits_on(prepare(fp32), calibration_feeds(fp32, ranges)).reshape(-1, 1))
    lo, hi = estimator.range()
    assert type(entry["rmin"]) is np.float32 and type(entry["rmax"]) is np.float32  # ORT crashes on Python floats
    np.testing.assert_allclose(
        [entry["rmin"], entry["rmax"]], [lo[0], hi[0]], rtol=1e-6
    )  # batched vs one-shot histogram


def test_auto_mp_budget_zero_is_w8a8(fp32, ranges):
    auto, report = quantize(fp32, config_for("auto-mp", budget=0), ranges)
    w8a8, _ = quantize(fp32, config_for("w8a8"), ranges)
    assert report.activation_bits == {8: len(ranges.tensors)}
    np.testing.assert_array_equal(_run(auto), _run(w8a8))


def test_auto_mp_full_budget_is_all_16bit(fp32, ranges):
    auto, _ = quantize(fp32, config_for("auto-mp", budget=1.0), ranges)
    wide, _ = quantize(fp32, config_for("w8a8", int16=["*"]), ranges)
    np.testing.assert_array_equal(_run(auto), _run(wide))


@pytest.fixture(scope="module")
def auto2(fp32, ranges, tmp_path_factory):
    path = tmp_path_factory.mktemp("auto") / "sel.json"
    model, report = quantize(fp32, config_for("auto-mp", budget=2), ranges)
    save_selection(path, model_record(fp32), "auto-mp", report.selection)
    return model, report, path


def test_auto_mp_takes_the_most_sensitive_roles_and_replays(fp32, ranges, auto2):
    model, report, path = auto2
    doc = json.loads(path.read_text())
    scores = doc["sensitivity"]["sqnr_db"]
    assert len(scores) == len(set(find_roles(fp32).roles.values())) and len(doc["roles"]) == 2
    assert sorted(doc["roles"], key=scores.get) == sorted(scores, key=scores.get)[:2]
    assert any(line.startswith("auto-mp: all-16-bit logit SQNR") for line in report.lines())
    replayed, _ = quantize(fp32, config_for("w8a8", int16_from=str(path)), ranges)
    np.testing.assert_array_equal(_run(model), _run(replayed))


def test_regridded_quantizer_scores_like_the_real_16bit_model(fp32, roles, ranges):
    """The scan's stand-in (a quantizer re-gridded in place) matches re-running the quantizer."""
    role = "layer.0.ffn.residual_sum"
    feeds = calibration_feeds(fp32, ranges)
    w8a8, _ = quantize(fp32, config_for("w8a8"), ranges)
    real, _ = quantize(fp32, config_for("w8a8", int16=[role]), ranges)
    tensor = roles.tensor(role)
    stand_in = with_quantizer_bits(w8a8, {tensor: activation_ranges(ranges.tensors)[tensor]}, 16)
    reference = logits_on(prepare(fp32), feeds)
    assert abs(sqnr_db(reference, logits_on(real, feeds)) - sqnr_db(reference, logits_on(stand_in, feeds))) < 0.1


def test_pattern_matching_nothing_lists_the_roles(fp32, ranges):
    with pytest.raises(
        UsageError, match=r"'layer\.7\.ffn\.\*' matches no role; known roles: .*layer\.0-1\.ffn\.residual_sum"
    ):
        quantize(fp32, config_for("w8a8", int16=["layer.7.ffn.*"]), ranges)


@pytest.mark.parametrize("budget", [-1, 10_000, 1.5, -0.1, None, "3"])
def test_budget_out_of_range(fp32, ranges, budget):
    with pytest.raises(UsageError, match="budget"):
        quantize(fp32, config_for("auto-mp", budget=budget), ranges)


def test_selection_from_another_model_is_refused(fp32, ranges, tmp_path):
    path = tmp_path / "sel.json"
    _, report = quantize(fp32, config_for("w8a8", int16=["output"]), ranges)
    save_selection(path, model_record(fp32), "w8a8", report.selection)
    other = onnx.ModelProto()
    other.CopyFrom(fp32)
    weight = next(i for i in other.graph.initializer if i.name == "classifier.weight")
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) + 1e-3, weight.name))
    with pytest.raises(UsageError, match="selected on another model"):
        quantize(other, config_for("w8a8", int16_from=str(path)), ranges)
    with pytest.raises(UsageError, match="not found"):
        quantize(fp32, config_for("w8a8", int16_from=str(tmp_path / "missing.json")), ranges)


def test_int16_needs_quantized_activations(fp32):
    with pytest.raises(UsageError, match="int16 needs a scheme that quantizes activations"):
        quantize(fp32, config_for("w8a32", int16=["output"]), None)


def test_cli_flags(tiny_onnx, ranges, tmp_path, capfd):
    ranges.save(tmp_path / "ranges.json")
    out, sel = tmp_path / "q.onnx", tmp_path / "sel.json"
    args = ["quantize", str(tiny_onnx), "-o", str(out), "--ranges", str(tmp_path / "ranges.json")]
    assert main([*args, "--int16", "output", "--int16", "layer.1.ffn.*", "--save-selection", str(sel)]) == 0
    err = capfd.readouterr().err
    assert "16-bit: 7 of 34 activations" in err and CPU_NOTE in err
    assert json.loads(sel.read_text())["roles"][-1] == "output"
    assert main([*args, "--int16-from", str(sel)]) == 0
    capfd.readouterr()
    assert main([*args, "--scheme", "auto-mp", "--budget", "lots"]) == 2  # argparse's error, as one line
    err = capfd.readouterr().err.strip()
    assert "--budget" in err and "neither a count" in err and "\n" not in err
