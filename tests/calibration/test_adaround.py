"""AdaRound: learned rounding keeps each layer's output closer to FP32 than round-to-nearest."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qonnx_bert.calibration.adaround import AdaRoundConfig, input_grams, reconstruction_error
from qonnx_bert.calibration.calibrate import calibrate
from qonnx_bert.calibration.weight_grid import WeightGrid
from qonnx_bert.core.errors import UsageError
from qonnx_bert.graph.prepare import prepare
from qonnx_bert.inputs.sequences import sample_sequences, shipped_sentences
from qonnx_bert.passes.lowbit_weights import weight_sites
from qonnx_bert.quantize.api import quantize
from qonnx_bert.quantize.lowbit import LowBitConfig, lower_weight_bits
from qonnx_bert.quantize.schemes import config_for


@pytest.fixture(scope="module")
def setup(tiny_onnx):
    fp32 = onnx.load(str(tiny_onnx))
    ranges = calibrate(fp32, sample_sequences(shipped_sentences(), None, 16, 0, "shipped"), progress=False)
    return fp32, prepare(fp32), quantize(fp32, config_for("w8a32"), None)[0], ranges


def _integers(model):
    """Float weight name -> (integers, full-shape scale) of every 4-bit DequantizeLinear."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith("_q4"):
            q, scale = inits[node.input[0]].astype(np.int64), inits[node.input[1]]
            axis = next(a.i for a in node.attribute if a.name == "axis")
            out[node.input[0].removesuffix("_q4")] = (q, np.expand_dims(scale, 1 - axis))
    return out


def test_adaround_reconstructs_layers_better_than_rounding_to_nearest(setup):
    fp32, floats, w8a32, ranges = setup
    config = LowBitConfig(WeightGrid(4))
    nearest, _ = lower_weight_bits(w8a32, floats, config)
    learned, _ = lower_weight_bits(
        w8a32, floats, LowBitConfig(WeightGrid(4), adaround=AdaRoundConfig(500)), ranges.sequences()
    )
    sites = [s for s in weight_sites(w8a32, floats) if not s.embedding]
    inputs = {n.name: n.input[0] for n in floats.graph.node}
    grams = input_grams(floats, sorted({inputs[s.consumer] for s in sites}), ranges.sequences())
    rtn, ada = _integers(nearest), _integers(learned)
    ratios = []
    for site in sites:
        (q_rtn, scale), (q_ada, _) = rtn[site.name], ada[site.name]
        assert np.abs(q_ada - q_rtn).max() <= 1  # each weight rounds down or up: never further
        flip = (lambda a: a.T) if site.channel_axis == 0 else (lambda a: a)  # Gemm transB: y = x @ W.T
        gram = grams[inputs[site.consumer]]
        e_rtn = reconstruction_error(flip(site.values), flip(q_rtn * scale), gram)
        e_ada = reconstruction_error(flip(site.values), flip(q_ada * scale), gram)
        assert e_ada <= e_rtn, site.name
        ratios.append(e_ada / e_rtn)
    # Measured 0.21-0.52 on the 13 hidden-32 layers after 500 steps (0.90 on the 2-output classifier).
    assert np.mean(ratios) < 0.7


def test_adaround_needs_the_calibration_sequences(setup):
    _, floats, w8a32, _ = setup
    with pytest.raises(UsageError, match="AdaRound needs the calibration sequences"):
        lower_weight_bits(w8a32, floats, LowBitConfig(WeightGrid(4), adaround=AdaRoundConfig()))
