"""Calibration ranges against an independent reference: unpadded single-sequence runs in NumPy."""

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from qonnx_bert.calibration.calibrate import calibrate
from qonnx_bert.calibration.ranges import RangeTable
from qonnx_bert.calibration.tensors import quantizable_tensors
from qonnx_bert.core.errors import UsageError
from qonnx_bert.graph.prepare import MASK_FILL, prepare
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.sequences import sample_sequences
from tests.conftest import RAGGED_TEXTS as TEXTS


def _reference_ranges(model, names):
    """Min/max over each sequence run alone (batch 1, no padding at all)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    session = ort.InferenceSession(exposed.SerializeToString())
    encoder = Encoder.from_model(model)
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    for text in TEXTS:
        for name, value in zip(names, session.run(names, encoder.feeds([text])), strict=True):
            lo[name], hi[name] = min(lo[name], value.min()), max(hi[name], value.max())
    return lo, hi


def test_padded_batches_give_unpadded_ranges(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    # batch_size 4 pads the shorter sequences of each batch; the mask must hide them.
    table = calibrate(model, sample_sequences(TEXTS, None, len(TEXTS), 0, "test"), batch_size=4, progress=False)
    layouts = [t for t in quantizable_tensors(prepare(model)) if not t.mask_path]
    lo, hi = _reference_ranges(prepare(model), [t.name for t in layouts])
    for t in layouts:
        got = table.tensors[t.name]
        # Batched and single-sequence kernels differ only by float32 rounding.
        assert got["min"] == pytest.approx(lo[t.name], rel=1e-4, abs=1e-5), t.name
        assert got["max"] == pytest.approx(hi[t.name], rel=1e-4, abs=1e-5), t.name


def test_mask_path_keeps_its_fill_value(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    table = calibrate(model, sample_sequences(TEXTS, None, len(TEXTS), 0, "test"), batch_size=4, progress=False)
    masks = [t for t in quantizable_tensors(prepare(model)) if t.mask_path]
    assert masks, "the additive attention mask should be found"
    for t in masks:
        assert table.tensors[t.name]["min"] == MASK_FILL and table.tensors[t.name]["max"] == 0.0


def test_per_channel_stats_match_per_tensor(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    table = calibrate(model, sample_sequences(TEXTS, None, len(TEXTS), 0, "test"), batch_size=4, progress=False)
    assert {r.split(".", 2)[2] for r in table.per_channel} == {
        "ffn.input",
        "ffn.output",
        "ffn.residual_sum",
        "ffn.gelu",
    }
    for role, entry in table.per_channel.items():
        assert len(entry["min"]) == (64 if role.endswith("gelu") else 32)  # tiny BERT: hidden 32, intermediate 64
        per_tensor = table.tensors[entry["tensor"]]
        assert min(entry["min"]) == pytest.approx(per_tensor["min"]) and max(entry["max"]) == pytest.approx(
            per_tensor["max"]
        ), role


def test_static_shape_masks_tokens_not_equally_sized_channels(tiny_onnx, tiny_bert_dir, tmp_path):
    """At --static-shape 1,32 the tiny BERT's hidden size equals the sequence length: padding
    must be excluded along the token axis only, so every range matches the dynamic export's."""
    from qonnx_bert.inputs.export import export_model

    static = tmp_path / "tiny_1x32.onnx"
    export_model(str(tiny_bert_dir), static, static_shape=(1, 32))
    sequences = sample_sequences(TEXTS, None, len(TEXTS), 0, "test")
    dynamic = calibrate(onnx.load(str(tiny_onnx)), sequences, progress=False)
    fixed = calibrate(onnx.load(str(static)), sequences, progress=False)
    by_role = {e["role"]: e for e in fixed.tensors.values() if e.get("role")}
    roles = [e["role"] for e in dynamic.tensors.values() if e.get("role")]
    assert len(roles) > 30 and set(roles) == set(by_role)
    for entry in dynamic.tensors.values():
        if entry.get("role"):  # float32 sums over padded and unpadded rows differ in the last bits only
            got = by_role[entry["role"]]
            assert got["min"] == pytest.approx(entry["min"], rel=1e-4, abs=1e-5), entry["role"]
            assert got["max"] == pytest.approx(entry["max"], rel=1e-4, abs=1e-5), entry["role"]


def test_ranges_file_round_trip_and_mismatch(tiny_onnx, tmp_path, tiny_bert_dir):
    model = onnx.load(str(tiny_onnx))
    table = calibrate(model, sample_sequences(TEXTS, None, 4, 0, "test"), progress=False)
    path = tmp_path / "ranges.json"
    table.save(path)
    loaded = RangeTable.load(path)
    assert loaded.tensors == table.tensors and json.loads(path.read_text())["version"] == 1
    other = onnx.load(str(tiny_onnx))
    other.graph.initializer[0].raw_data = bytes(len(other.graph.initializer[0].raw_data))
    with pytest.raises(UsageError, match="another model"):
        loaded.check_fits(other, [])
    with pytest.raises(UsageError, match="lacks ranges"):
        loaded.check_fits(model, ["no_such_tensor"])


def test_ort_cache_is_readable_by_onnxruntime(tiny_onnx, tmp_path):
    from onnxruntime.quantization.calibrate import load_tensors_data

    table = calibrate(onnx.load(str(tiny_onnx)), sample_sequences(TEXTS, None, 4, 0, "test"), progress=False)
    table.save_ort_cache(tmp_path / "cache.json")
    cache = load_tensors_data(tmp_path / "cache.json")
    name = next(iter(table.tensors))
    assert float(cache[name].range_value[0]) == pytest.approx(table.tensors[name]["min"])


def test_nan_activation_names_tensor_and_role(tiny_onnx):
    """A NaN bias in layer 0's FFN: the first tensor it reaches is named, with its role."""
    from qonnx_bert.graph.roles import find_roles

    model = onnx.load(str(tiny_onnx))
    target = find_roles(prepare(model)).tensor("layer.0.ffn.intermediate")
    add = next(n for n in model.graph.node if target in n.output)
    bias = next(i for i in model.graph.initializer if i.name in add.input)
    poisoned = onnx.numpy_helper.from_array(
        np.full(onnx.numpy_helper.to_array(bias).shape, np.nan, np.float32), "poisoned_bias"
    )
    model.graph.initializer.append(poisoned)
    add.input[list(add.input).index(bias.name)] = poisoned.name  # only this Add sees the NaN
    with pytest.raises(UsageError) as err:
        calibrate(model, sample_sequences(TEXTS, None, 4, 0, "test"), progress=False)
    assert f"tensor {target} (role layer.0.ffn.intermediate) holds NaN or Inf" in str(err.value)


def test_segments_reproduce_the_whole_graph(tiny_onnx):
    """Cut into segments with carried values and fed weights, the graph computes what it computes whole."""
    from qonnx_bert.calibration.segments import Pipeline, SplitModel

    model = prepare(onnx.load(str(tiny_onnx)))
    names = [t.name for t in quantizable_tensors(model)]
    feeds = Encoder.from_model(model).feeds(TEXTS[:4])  # padded batch
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    whole = dict(zip(names, ort.InferenceSession(exposed.SerializeToString()).run(names, feeds), strict=True))
    chunks = [names[i : i + 7] for i in range(0, len(names), 7)]
    pipeline = Pipeline(SplitModel.from_proto(model), chunks)
    assert len(pipeline.segments) == len(chunks) and sum(len(s.nodes) for s in pipeline.segments) <= len(
        model.graph.node
    )
    got = {}
    for values in pipeline.run(feeds):
        got.update({n: v.copy() for n, v in values.items()})
    assert got.keys() == whole.keys()
    for name in names:
        np.testing.assert_array_equal(got[name], whole[name], err_msg=name)


def test_split_model_from_ir_keeps_the_ir_arrays_and_rebuilds_the_model(fp32):
    """An IR model split and put back together is the model it came from, fingerprint included; the split
    holds the IR's own NumPy arrays (a rewrite's new weights are not copied)."""
    import onnx_ir as ir

    from qonnx_bert.calibration.ranges import model_fingerprint
    from qonnx_bert.calibration.segments import SplitModel

    model = ir.from_proto(fp32)
    biggest = max(model.graph.initializers.values(), key=lambda v: v.const_value.size)
    array = biggest.const_value.numpy().copy()
    biggest.const_value = ir.tensor(array, name=biggest.name)  # as a rewriting pass leaves a weight
    split = SplitModel.from_ir(model)
    assert split.weights[biggest.name] is array
    rebuilt = split.into_proto()
    assert split.fingerprint == model_fingerprint(fp32) == model_fingerprint(rebuilt) and not split.weights
    rebuilt = {i.name: numpy_helper.to_array(i) for i in rebuilt.graph.initializer}
    for init in fp32.graph.initializer:
        np.testing.assert_array_equal(rebuilt[init.name], numpy_helper.to_array(init), err_msg=init.name)


def test_quantizing_imports_no_torch(tiny_onnx, ranges, tmp_path):
    """ORT's QNN helpers import torch when it is installed; quantize loads the one module it needs without them."""
    ranges_path = tmp_path / "r.json"
    ranges.write(ranges_path)
    code = (
        "import sys; from qonnx_bert.cli import main; "
        f"rc = main(['quantize', {str(tiny_onnx)!r}, '--scheme', 'peg', '--ranges', {str(ranges_path)!r}, "
        f"'-o', {str(tmp_path / 'q.onnx')!r}]); "
        "assert rc == 0 and 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3]"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
