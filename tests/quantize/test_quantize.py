"""QDQ models: structure, types, accuracy floor against FP32, and ORT's integer kernels."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.metrics import sqnr_db
from qonnx_bert.graph.roles import find_roles
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.sequences import shipped_sentences
from qonnx_bert.quantize import config_for, quantize
from tests.conftest import tensor_values

U8, I8 = onnx.TensorProto.UINT8, onnx.TensorProto.INT8


def _logits(model, texts):
    enc, sess = Encoder.from_model(model), ort.InferenceSession(model.SerializeToString())
    return np.concatenate([sess.run(None, enc.feeds([t]))[0] for t in texts])


def _quantized_inputs(model):
    """tensor -> zero-point dtype of the QuantizeLinear that consumes it.

    ORT renames a quantized graph output's producer output to ``<name>_QuantizeLinear_Input``.
    """
    inits = {i.name: i for i in model.graph.initializer}
    return {
        n.input[0].removesuffix("_QuantizeLinear_Input"): inits[n.input[2]].data_type
        for n in model.graph.node
        if n.op_type == "QuantizeLinear"
    }


def test_w8a8_quantizes_every_role_in_uint8(fp32, ranges):
    model, report = quantize(fp32, config_for("w8a8"), ranges)
    q_inputs = _quantized_inputs(model)
    roles = find_roles(fp32)
    for role, tensor in roles.roles.items():
        assert q_inputs.get(tensor) == U8, f"{role} ({tensor}) has no uint8 QuantizeLinear"
    assert report.activation_bits == {8: len(q_inputs)}


def test_w8a8_weights_are_int8_symmetric(fp32, ranges):
    model, _ = quantize(fp32, config_for("w8a8"), ranges)
    inits = {i.name: i for i in model.graph.initializer}
    matmul_weights = [n.input[1] for n in model.graph.node if n.op_type == "MatMul"]
    producers = {o: n for n in model.graph.node for o in n.output}
    checked = 0
    for w in matmul_weights:
        dq = producers.get(w)
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            assert inits[dq.input[0]].data_type == I8
            assert not onnx.numpy_helper.to_array(inits[dq.input[2]]).any()  # symmetric: zero point 0
            checked += 1
    assert checked == 2 * 6  # 2 layers x (q, k, v, attention output, FFN in, FFN out)


def test_w8a8_close_to_fp32(fp32, ranges):
    model, _ = quantize(fp32, config_for("w8a8"), ranges)
    texts = shipped_sentences()[32:]
    ref, got = _logits(fp32, texts), _logits(model, texts)
    # ~25 chained 8-bit quantizers each add noise about 40 dB below the signal; a wrong scale,
    # zero point or dropped mask gives < 10 dB. 20 dB is far below what a correct model gets.
    assert sqnr_db(ref, got) > 20.0


def test_weight_only_and_activation_only(fp32, ranges):
    texts = shipped_sentences()[:16]
    w_only, rep_w = quantize(fp32, config_for("w8a32"), None)
    a_only, rep_a = quantize(fp32, config_for("w32a8"), ranges)
    assert rep_w.activation_bits == {} and rep_w.quantized_weights >= 12
    assert sum(rep_a.activation_bits.values()) > 0
    a_inits = {i.name: i.data_type for i in a_only.graph.initializer}
    weights = [n.input[1] for n in a_only.graph.node if n.op_type == "MatMul" and n.input[1] in a_inits]
    assert len(weights) == 12 and all(a_inits[w] == onnx.TensorProto.FLOAT for w in weights)
    # The tiny random model's logits barely depend on its input, so compare the encoder output.
    last = find_roles(fp32).tensor("layer.1.ffn.layernorm")
    exact = tensor_values(fp32, last, texts)
    assert sqnr_db(exact, tensor_values(w_only, last, texts)) > 25.0  # one rounding per weight, no chaining
    assert sqnr_db(exact, tensor_values(a_only, last, texts)) > 20.0


def test_cpu_provider_uses_integer_kernels(fp32, ranges, tmp_path):
    model, _ = quantize(fp32, config_for("w8a8"), ranges)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert ops & {"QLinearMatMul", "MatMulIntegerToFloat", "MatMulInteger"}, ops
    assert "MatMul" not in ops  # every MatMul became an integer kernel


def test_activation_scheme_needs_ranges(fp32):
    with pytest.raises(UsageError, match="--ranges"):
        quantize(fp32, config_for("w8a8"), None)
    with pytest.raises(UsageError, match="unknown scheme"):
        config_for("w4a4")
