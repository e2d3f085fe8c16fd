"""PEG: FP32-exact lowering, K=1 equals W8A8, a per-channel QDQ reference, integer kernels, bad input."""

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from qonnx_bert.analysis.evaluate import evaluate
from qonnx_bert.analysis.peg_reference import per_channel_reference
from qonnx_bert.calibration.calibrate import calibrate
from qonnx_bert.calibration.ranges import model_fingerprint
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.metrics import argmax_agreement, sqnr_db
from qonnx_bert.core.modelinfo import read_permuted
from qonnx_bert.graph.prepare import prepare
from qonnx_bert.graph.roles import find_roles
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.glue import load_task
from qonnx_bert.inputs.sequences import sample_sequences, shipped_sentences
from qonnx_bert.passes.peg_split_ffn import split_ffn
from qonnx_bert.quantize import ConfigError, config_for, quantize
from qonnx_bert.quantize.schemes import SchemeContext, get_scheme
from qonnx_bert.quantize.schemes.peg_groups import equal_groups, outlier_groups
from qonnx_bert.targets.cpu import check_cpu
from tests.conftest import SST2_SAMPLE, assert_models_close, plant_gelu_outlier, tensor_values

HIDDEN = 32  # the tiny BERT's hidden size
TEXTS = shipped_sentences()


def _feeds(model, texts=TEXTS):
    encoder = Encoder.from_model(model)
    return [encoder.feeds(texts[i : i + 8]) for i in range(0, len(texts), 8)]


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
    moved = {}
    for layer in range(roles.num_layers):
        units = (
            np.array_split(rng.permutation(2 * HIDDEN), unit_groups) if unit_groups > 1 else None
        )  # scattered GELU units
        moved |= split_ffn(
            model.graph, roles.roles, layer, equal_groups(rng.uniform(size=HIDDEN), k, permute), units
        ).permuted
    rewritten = ir.to_proto(model)
    # Only float32 summation order changes (K partial MatMuls): the bound is 1e-4.
    assert_models_close(prepared, rewritten, _feeds(prepared), atol=1e-4)
    # The tensors the rewrite reports as permuted (the FFN input, the GELU units) hold exactly that permutation
    # of their FP32 values, which `qonnx debug` relies on; the other role tensors keep their order.
    assert len(moved) == roles.num_layers * (permute + 2 * (unit_groups > 1))
    kept = [roles.tensor(f"layer.{i}.ffn.{r}") for i in range(roles.num_layers) for r in ("residual_sum", "layernorm")]
    names = [*moved, *kept]
    for name, got, want in zip(names, _tensors(rewritten, names), _tensors(prepared, names), strict=True):
        np.testing.assert_allclose(got, want[..., moved[name]] if name in moved else want, atol=1e-4)
    # 6 attention MatMuls, K for the first FFN dense layer and K * (GELU unit groups) for the second, per layer
    assert sum(n.op_type == "MatMul" for n in rewritten.graph.node) == roles.num_layers * (6 + k + k * unit_groups)


def test_split_ffn_drops_each_weight_it_replaces_at_once(fp32):
    """Memory: the old W1/W2 of a split layer leave the graph with it, not after every layer is split."""
    prepared = prepare(fp32)
    roles = find_roles(prepared)
    model = ir.from_proto(prepared)
    split_ffn(model.graph, roles.roles, 0, equal_groups(np.random.default_rng(0).uniform(size=HIDDEN), 3, True))
    read = {v.name for node in model.graph for v in node.inputs if v is not None}
    unread = [name for name in model.graph.initializers if name not in read]
    assert unread == [] and len(read & set(model.graph.initializers)) > 0


@pytest.fixture(scope="module")
def planted(fp32):
    """The tiny BERT with one GELU unit of layer 0 30x wider than the rest, and its ranges."""
    model = plant_gelu_outlier(fp32, layer=0, unit=5)
    return model, calibrate(model, sample_sequences(TEXTS, None, 32, 0, "shipped"), progress=False)


def _rewritten_fp32(model, ranges, scheme="peg", **options):
    """The FP32 graph a PEG scheme rewrites (before QDQ): the exact values of its group tensors."""
    prepared = prepare(model)
    config = config_for(scheme, **options)
    plan = get_scheme(scheme).plan(
        SchemeContext(config, model_fingerprint(model), prepared, find_roles(prepared), ranges)
    )
    return plan.model


def test_gelu_output_groups_take_back_a_planted_outlier_unit(planted):
    model, ranges = planted
    options = {"groups": 2, "target": "cpu"}
    one, _ = quantize(model, config_for("peg", **options, intermediate_groups=1), ranges)
    split, report = quantize(model, config_for("peg", **options), ranges)  # peg's default: 2
    # the wide unit gets a group of its own; layer 1, with no such unit, keeps its GELU output whole
    assert "GELU output units in groups [63,1]" in report.lines()[1] and "GELU" not in report.lines()[2]
    assert report.lines()[-1].endswith(
        "; GELU groups add 2*J = 4 ranges in each of the 1 layers they split (their unit permutation is folded into "
        "the weights)"
    )
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
    peg, _ = quantize(model, config_for("peg", groups=2, target="cpu", intermediate_groups=2), ranges)
    split = next(n for n in peg.graph.node if n.name == "layer0.peg.h")
    producers = {o: n for n in peg.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in peg.graph.initializer}
    assert producers[split.input[0]].op_type == "BiasGelu"  # --target cpu: the whole GELU output stays float (fused)
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
    w8a8, _ = quantize(fp32, config_for("w8a8"), ranges)
    peg, _ = quantize(fp32, config_for("peg-equal", groups=1, permutation="none"), ranges)
    np.testing.assert_array_equal(_logits(peg), _logits(w8a8))


def _peg_and_reference(fp32, ranges, scheme, **options):
    config = config_for(scheme, **options)
    peg, _ = quantize(fp32, config, ranges)
    return peg, per_channel_reference(fp32, ranges, config)


def _fp32_order(model, tensor, texts=TEXTS):
    """``tensor``'s values over ``texts`` as rows of its last axis, in the FP32 model's order of that axis."""
    values = tensor_values(model, tensor, texts).reshape(-1, HIDDEN)
    perm = read_permuted(model).get(tensor)
    return values if perm is None else values[:, np.argsort(perm)]


@pytest.mark.parametrize(
    "scheme, options", [("peg-equal", {"groups": 4, "permutation": "none"}), ("peg", {"groups": 3})]
)
def test_lowered_peg_matches_per_channel_reference(fp32, ranges, scheme, options):
    peg, ref = _peg_and_reference(fp32, ranges, scheme, **options)
    last = find_roles(fp32).tensor("layer.1.ffn.layernorm")
    got, want, exact = _fp32_order(peg, last), _fp32_order(ref, last), _fp32_order(fp32, last)
    # Same tensors, same group ranges: the lowering differs from the reference by the rounding of
    # values its float summation order moves across a rounding boundary, far less than the
    # quantization noise both carry vs FP32 (measured 15-22 dB less on the tiny BERT).
    assert sqnr_db(want, got) > sqnr_db(exact, got) + 10


@pytest.mark.parametrize(
    "scheme, options", [("peg-equal", {"groups": 4, "permutation": "none"}), ("peg", {"groups": 3})]
)
def test_cpu_lowering_rounds_less_than_the_per_channel_reference(fp32, ranges, scheme, options):
    """``target=cpu`` rounds only the MatMul inputs of the reference's computation (the same groups
    and ranges; outputs, residual sums, LayerNorm and softmax stay float): it is a different, lighter
    quantization, so what must hold is that it is at least as close to FP32 as the reference."""
    peg, ref = _peg_and_reference(fp32, ranges, scheme, target="cpu", **options)
    last = find_roles(fp32).tensor("layer.1.ffn.layernorm")
    got, want, exact = _fp32_order(peg, last), _fp32_order(ref, last), _fp32_order(fp32, last)
    assert sqnr_db(exact, got) > sqnr_db(exact, want)


@pytest.mark.slow
def test_peg_and_reference_both_repair_minilm_outliers(minilm_onnx):
    fp32 = onnx.load(str(minilm_onnx))
    ranges = calibrate(fp32, sample_sequences(TEXTS, None, 32, 0, "shipped"), progress=False)
    peg, ref = _peg_and_reference(fp32, ranges, "peg-equal", groups=6, permutation="none")
    w8a8, _ = quantize(fp32, config_for("w8a8"), ranges)
    exact = _logits(fp32)
    base = sqnr_db(exact, _logits(w8a8))
    # The packaged MiniLM's FFN outliers cost W8A8 several dB; per-group ranges, lowered or
    # simulated per channel, must win most of that back (measured: ~8.7 -> ~12.4 dB).
    assert sqnr_db(exact, _logits(peg)) > base + 2
    assert sqnr_db(exact, _logits(ref)) > base + 2


@pytest.fixture(scope="module")
def fine_tuned(minilm_sst2_static):
    """The MiniLM fine-tuned in the fixture, its ranges, its dev set and FP32 logits."""
    from qonnx_bert.inputs.sequences import glue_train_sequences

    fp32 = onnx.load(str(minilm_sst2_static))
    ranges = calibrate(fp32, glue_train_sequences("sst2", SST2_SAMPLE, 32, 0), progress=False)
    dev = load_task("sst2", "dev", SST2_SAMPLE)
    return fp32, ranges, dev, evaluate(fp32, dev, progress=False).logits


@pytest.mark.slow
@pytest.mark.parametrize(
    "scheme, options",
    [("peg", {"target": "portable"}), ("peg", {"target": "cpu"}), ("peg-equal", {"groups": 6, "permutation": "none"})],
)
def test_lowered_peg_predicts_as_the_per_channel_reference(fine_tuned, scheme, options):
    """Issue 7's reference check on a model with trained margins (MiniLM fine-tuned on SST-2
    in the fixture): same per-group ranges, lowered to per-tensor groups vs simulated per channel."""
    fp32, ranges, dev, exact = fine_tuned
    peg, ref = _peg_and_reference(fp32, ranges, scheme, **options)
    got, want = (evaluate(m, dev, progress=False).logits for m in (peg, ref))
    # Two 8-bit implementations of one quantized model never agree bit for bit: a value that float
    # summation order moves across a rounding boundary is one step off, and the difference grows
    # through six layers of requantization to about the quantization noise itself. What the
    # lowering must show is that it is closer to the reference than the reference is to FP32.
    # Measured on the 128 dev sentences, logit SQNR lowered-vs-reference / reference-vs-FP32:
    # peg portable 27.4 / 24.5 dB, peg-equal 23.2 / 17.6; agreement 99%. (W8A8: 10.6 dB vs FP32.)
    if options.get("target") == "cpu":
        # A lighter quantization than the reference's (only MatMul inputs rounded, same groups and
        # ranges): as close to FP32 up to sample noise, not on every sample. Measured cpu / reference
        # vs FP32: 24.0 / 24.5 dB, argmax agreement 98.4% / 96.9%.
        # 1 dB bounds that spread; a wrong group range or permutation costs far more (W8A8 is 14 dB down).
        assert sqnr_db(exact, got) >= sqnr_db(exact, want) - 1.0
        assert argmax_agreement(exact, got) >= argmax_agreement(exact, want) - 0.01
        return
    assert sqnr_db(want, got) >= sqnr_db(exact, want) + 1.5
    assert argmax_agreement(want, got) >= 0.95
    assert argmax_agreement(exact, got) >= argmax_agreement(exact, want) - 0.03


@pytest.mark.parametrize("target", ["portable", "cpu"])
def test_group_matmuls_use_integer_kernels(fp32, ranges, tmp_path, target):
    peg, report = quantize(fp32, config_for("peg", groups=3, target=target), ranges)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(peg.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    if target == "cpu":  # every weighted MatMul reads uint8 and writes float; the attention products are float
        inits = {i.name for i in peg.graph.initializer}
        weight_dq = {n.output[0] for n in peg.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
        weighted = sum(n.op_type == "MatMul" and n.input[1] in weight_dq for n in peg.graph.node)
        assert ops.count("MatMulIntegerToFloat") == weighted and not [o for o in ops if o.startswith("QLinear")]
        assert f"MatMul: {weighted} of {weighted} QDQ units fused into integer kernels" in check_cpu(peg).summary
        return
    # per layer: 6 attention MatMuls and the 3 group MatMuls of the second dense layer, uint8 in and out
    assert ops.count("QLinearMatMul") == 2 * (6 + 3)
    # the first dense layer's 3 partial products are summed unrounded, in uint16 (HTP runs a16w8 natively;
    # the CPU provider, with no 16-bit kernels, on float activations: MatMulNBits with the int8 weights).
    assert ops.count("MatMulNBits") == 2 * 3 and "MatMul" not in ops and report.activation_bits.get(16, 0) >= 4 + 2 * 3
    # `qonnx check --ep cpu` says so: the uint16 partial products are MatMuls on float activations
    assert f"MatMul: {2 * (6 + 3)} of {2 * (6 + 3 + 3)} QDQ units fused into integer kernels" in check_cpu(peg).summary


def test_each_group_has_its_own_scale(fp32, ranges):
    peg, _ = quantize(fp32, config_for("peg-equal", groups=4), ranges)
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
    peg, _ = quantize(fp32, config_for("peg-equal", groups=4, permutation="none", target=target), ranges)
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
        chains = [_quantizer_chain(peg, g) for g in split.output]
        inits_dtype = lambda pair: inits[pair[0].input[2]].dtype  # noqa: E731
        own = [next(p for p in chain if inits_dtype(p) == np.uint8) for chain in chains]  # each group's uint8 grid
        values = _tensors(peg, [source] + [dq.output[0] for _, dq in own])
        # what the group MatMuls read: these values, or (portable) their lossless uint16 copy for an a16w8 MatMul
        read = _tensors(peg, [chain[-1][1].output[0] for chain in chains])
        assert all(np.allclose(r, v, rtol=1e-6, atol=1e-7) for r, v in zip(read, values[1:]))
        col = 0
        for (q, _), got in zip(own, values[1:]):
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


def _quantizer_chain(model, tensor):
    """The (QuantizeLinear, DequantizeLinear) pairs of the Q/DQ chain (converts included) that starts at ``tensor``."""
    chain = []
    while True:
        q = next((n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor), None)
        if q is None:
            return chain
        chain.append(
            (q, next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]))
        )
        tensor = chain[-1][1].output[0]


def _last_quantizer(model, tensor):
    """The last (QuantizeLinear, DequantizeLinear) of the Q/DQ chain that starts at ``tensor``."""
    chain = _quantizer_chain(model, tensor)
    return chain[-1] if chain else None


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
    portable, report_p = quantize(fp32, config_for("peg", groups=3), ranges)
    cpu, report_c = quantize(fp32, config_for("peg", groups=3, target="cpu"), ranges)
    assert report_p.activation_bits.get(16, 0) > 0 and report_c.activation_bits.get(16, 0) == 0
    concat = [n for n in cpu.graph.node if n.op_type == "Concat" and ".peg." in n.name]
    consumers = [n for n in cpu.graph.node if set(n.input) & {o for c in concat for o in c.output}]
    assert concat and all(n.op_type in ("LayerNormalization", "Gather") for n in consumers)


@pytest.mark.parametrize(
    "options, count",
    [
        ({"scheme": "peg-equal", "groups": 4}, "32 + 24 = 56"),
        ({"scheme": "peg", "groups": 3}, "0 + 18 = 18 (no permutation indices: folded into the weights)"),
    ],
)
def test_report_counts_the_papers_extra_parameters(fp32, ranges, options, count):
    options = dict(options)
    _, report = quantize(fp32, config_for(options.pop("scheme"), **options), ranges)
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
        quantize(fp32, config_for("peg", groups=HIDDEN + 1), ranges)
    with pytest.raises(ConfigError, match="layers has 7: out of range, this model has layers 0-1"):
        quantize(fp32, config_for("peg", layers=[7]), ranges)
    with pytest.raises(ConfigError, match="grouping outlier forms groups over range-sorted dimensions"):
        quantize(fp32, config_for("peg", permutation="none"), ranges)
    stripped = type(ranges)(ranges.model, ranges.calibration, ranges.tensors, {})
    with pytest.raises(UsageError, match="per-embedding statistics"):
        quantize(fp32, config_for("peg"), stripped)
    no_gelu = type(ranges)(
        ranges.model,
        ranges.calibration,
        ranges.tensors,
        {k: v for k, v in ranges.per_channel.items() if not k.endswith("ffn.gelu")},
    )
    with pytest.raises(UsageError, match="per-unit statistics for layer.0.ffn.gelu.*re-run `qonnx calibrate`"):
        quantize(fp32, config_for("peg", intermediate_groups=2), no_gelu)
    with pytest.raises(ConfigError, match="intermediate_groups is 0; give a whole number >= 1"):
        quantize(fp32, config_for("peg", intermediate_groups=0), ranges)
    with pytest.raises(UsageError, match=f"intermediate_groups is {2 * HIDDEN + 1}: out of range"):
        quantize(fp32, config_for("peg", intermediate_groups=2 * HIDDEN + 1), ranges)


def test_peg_takes_the_prepared_model_from_its_context(fp32, ranges):
    """PEG rewrites the prepared model and lets the context's reference go (freed as the rewrite copies it);
    reading it again afterwards is a bug, said as one."""
    prepared = prepare(fp32)
    ctx = SchemeContext(config_for("peg"), model_fingerprint(fp32), prepared, find_roles(prepared), ranges)
    get_scheme("peg").plan(ctx)
    with pytest.raises(RuntimeError, match="after a scheme took it"):
        ctx.prepared
