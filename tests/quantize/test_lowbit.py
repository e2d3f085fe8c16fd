"""Low-bit weights and embeddings: integers against a NumPy quantizer, ORT against the float graph, packing."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qonnx_bert.calibration.calibrate import calibrate
from qonnx_bert.calibration.ranges import model_fingerprint
from qonnx_bert.calibration.weight_grid import Granularity, WeightGrid
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.graph.prepare import prepare
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.sequences import sample_sequences, shipped_sentences
from qonnx_bert.quantize.api import quantize
from qonnx_bert.quantize.lowbit import LowBitConfig, lower_weight_bits
from qonnx_bert.quantize.schemes import config_for

TYPES = {8: onnx.TensorProto.INT8, 6: onnx.TensorProto.INT8, 4: onnx.TensorProto.INT4, 2: onnx.TensorProto.INT2}


@pytest.fixture(scope="module")
def fp32(tiny_onnx):
    return onnx.load(str(tiny_onnx))


@pytest.fixture(scope="module")
def w8a32(fp32):
    return quantize(fp32, config_for("w8a32"), None)[0]


def _new_dequantizers(model):
    """(node, integers, scale, zero point) of every DequantizeLinear this pass wrote."""
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.name.endswith(
            ("_q2_DequantizeLinear", "_q4_DequantizeLinear", "_q6_DequantizeLinear")
        ):
            yield node, *(inits[name] for name in node.input)


def _attr(node, name):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


def _reference(w, scale, node, qmax):
    """NumPy's symmetric quantizer on the file's own scales: round half to even, clamp to +-qmax."""
    axis, block = _attr(node, "axis"), _attr(node, "block_size")
    if block:
        scale = np.repeat(scale, block, axis=axis)
    elif scale.ndim:
        scale = np.expand_dims(scale, 1 - axis)
    return np.clip(np.rint(w / scale), -qmax, qmax), w.size // scale.size if not block else block


@pytest.mark.parametrize(
    "bits,granularity",
    [(6, Granularity.PER_CHANNEL), (4, Granularity.PER_CHANNEL), (4, Granularity.BLOCK), (2, Granularity.PER_TENSOR)],
)
def test_integers_are_numpys_rounding_of_the_float_weights(fp32, w8a32, bits, granularity):
    grid = WeightGrid(bits, granularity, block_size=16)
    model, _ = lower_weight_bits(w8a32, prepare(fp32), LowBitConfig(grid, grid))
    floats = {i.name: numpy_helper.to_array(i) for i in prepare(fp32).graph.initializer}
    checked = 0
    for node, q, scale, zero in _new_dequantizers(model):
        assert q.data_type == TYPES[bits] and zero.data_type == TYPES[bits]
        w = floats[q.name.removesuffix(f"_q{bits}")]
        ref, _ = _reference(w, numpy_helper.to_array(scale), node, grid.qmax)
        np.testing.assert_array_equal(numpy_helper.to_array(q).astype(np.int64), ref)
        assert not numpy_helper.to_array(zero).astype(np.int64).any()
        checked += 1
    assert checked == 2 * 6 + 2 + 1  # 2 layers x 6 MatMuls, pooler and classifier Gemms, word embeddings


def test_int4_and_int2_are_packed(fp32, w8a32):
    model, _ = lower_weight_bits(w8a32, prepare(fp32), LowBitConfig(WeightGrid(4), WeightGrid(2)))
    for _, q, _, _ in _new_dequantizers(model):
        bits = 4 if q.data_type == onnx.TensorProto.INT4 else 2
        assert len(q.raw_data) == -(-int(np.prod(q.dims)) * bits // 8)  # ceil(n * bits / 8) bytes
    assert next(o.version for o in model.opset_import if o.domain == "") == 25  # INT2 needs opset 25
    # The word embedding table (30522 x 32, 3.9 MB in FP32) is now 2 bits a value + one float scale a row.
    table = next(q for _, q, _, _ in _new_dequantizers(model) if "word_embeddings" in q.name)
    assert len(table.raw_data) == 30522 * 32 // 4


def _dequantized_float_graph(model):
    """The same model with each new DequantizeLinear replaced by NumPy's dequantized weight."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = []
    for node in out.graph.node:
        if node.name.endswith("_DequantizeLinear") and node.input[0].rsplit("_q", 1)[-1] in ("2", "4", "6"):
            q, scale = inits[node.input[0]].astype(np.float32), inits[node.input[1]]
            axis, block = _attr(node, "axis"), _attr(node, "block_size")
            if block:
                scale = np.repeat(scale, block, axis=axis)
            elif scale.ndim:
                scale = np.expand_dims(scale, 1 - axis)
            out.graph.initializer.append(numpy_helper.from_array((q * scale).astype(np.float32), node.output[0]))
        else:
            nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def test_onnx_runtime_computes_the_float_graph_with_the_dequantized_weights(fp32, w8a32):
    grid = WeightGrid(4, Granularity.BLOCK, block_size=16)
    model, _ = lower_weight_bits(w8a32, prepare(fp32), LowBitConfig(grid, WeightGrid(2)))
    feeds = Encoder.from_model(fp32).feeds(shipped_sentences()[:8])
    reference = cpu_session(_dequantized_float_graph(model), fused=False).run(None, feeds)[0]
    as_written = cpu_session(model, fused=False).run(None, feeds)[0]
    fused = cpu_session(model).run(None, feeds)[0]
    scale = np.abs(reference).max()
    # DequantizeLinear run as written is the same float32 product as NumPy's: equal to float rounding.
    np.testing.assert_allclose(as_written, reference, rtol=0, atol=1e-6 * scale)
    # Fused into MatMulNBits (accuracy level 4: activations quantized to int8 per block inside the
    # kernel) the logits move by about 2e-4 of their size here; 1% bounds it with margin.
    np.testing.assert_allclose(fused, reference, rtol=0, atol=1e-2 * scale)


def test_w8a8_with_4bit_weights_and_2bit_embeddings_runs(fp32):
    ranges = calibrate(fp32, sample_sequences(shipped_sentences(), None, 16, 0, "shipped"), progress=False)
    w8a8 = quantize(fp32, config_for("w8a8"), ranges)[0]
    model, notes = lower_weight_bits(w8a8, prepare(fp32), LowBitConfig(WeightGrid(4), WeightGrid(2)))
    feeds = Encoder.from_model(fp32).feeds(shipped_sentences()[:4])
    assert np.isfinite(cpu_session(model).run(None, feeds)[0]).all()
    assert notes == [
        "weights: 14 at 4-bit symmetric per-channel (MSE ranges)",
        "word embeddings: 1 at 2-bit symmetric per-channel (MSE ranges)",
    ]
    with pytest.raises(UsageError, match="2-bit weights with quantized activations"):
        lower_weight_bits(w8a8, prepare(fp32), LowBitConfig(WeightGrid(2), None))


@pytest.mark.parametrize("bits", [3, 16, 1])
def test_unsupported_bits_name_the_choices(bits):
    with pytest.raises(UsageError, match=r"use one of 8, 6, 4, 2"):
        WeightGrid(bits)


def test_block_size_must_divide_the_input(fp32, w8a32):
    with pytest.raises(UsageError, match="block size 64 does not divide"):
        lower_weight_bits(w8a32, prepare(fp32), LowBitConfig(WeightGrid(4, Granularity.BLOCK, 64), None))


def test_peg_split_weights_are_rewritten_from_the_plan_model(fp32):
    """PEG's per-group weight slices exist only in the plan's float model: the one quantize() must pass."""
    from qonnx_bert.graph.roles import find_roles
    from qonnx_bert.passes.qdq import insert_qdq
    from qonnx_bert.quantize.schemes import SchemeContext, get_scheme

    ranges = calibrate(fp32, sample_sequences(shipped_sentences(), None, 16, 0, "shipped"), progress=False)
    prepared = prepare(fp32)
    plan = get_scheme("peg").plan(
        SchemeContext(config_for("peg"), model_fingerprint(fp32), prepared, find_roles(prepared), ranges)
    )
    model, notes = lower_weight_bits(insert_qdq(plan), plan.model, LowBitConfig(WeightGrid(4)))
    # Per layer 4 attention MatMuls + 2 x 6 FFN group slices, and the 2 Gemms.
    assert notes == ["weights: 34 at 4-bit symmetric per-channel (MSE ranges)"]
    feeds = Encoder.from_model(fp32).feeds(shipped_sentences()[:2])
    assert np.isfinite(cpu_session(model).run(None, feeds)[0]).all()
    with pytest.raises(ValueError, match="no float"):  # the unsplit FP32 graph lacks the slices
        lower_weight_bits(insert_qdq(plan), prepared, LowBitConfig(WeightGrid(4)))
