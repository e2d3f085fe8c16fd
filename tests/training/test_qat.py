"""QAT: the trained fake-quant PyTorch model and its deployed QDQ model in ONNX Runtime compute the same thing."""

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoTokenizer

from qonnx_bert.calibration.calibrate import calibrate
from qonnx_bert.calibration.ranges import RangeTable, model_fingerprint
from qonnx_bert.calibration.weight_grid import WeightGrid
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.graph.prepare import prepare
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.export import export_model
from qonnx_bert.inputs.finetune import encode
from qonnx_bert.inputs.glue.tasks import load_task
from qonnx_bert.inputs.sequences import glue_train_sequences, shipped_sentences
from qonnx_bert.passes.lowbit_weights import weight_sites
from qonnx_bert.quantize.api import quantize, scheme_floats
from qonnx_bert.quantize.lowbit import LowBitConfig
from qonnx_bert.quantize.schemes import config_for
from qonnx_bert.training.fake_quant import LearnedRange, dequantize, fake_quantize
from qonnx_bert.training.fake_quant import quantize as quantize_linear
from qonnx_bert.training.qat import (
    DEV_LOGITS,
    QatConfig,
    deployed_model,
    learned_range_table,
    predict,
    range_sources,
    ranges_for,
    run_qat,
    trainable_module,
    with_weights,
)
from qonnx_bert.training.qdq_module import QdqModule
from qonnx_bert.training.weight_views import weight_views

LOWBIT = LowBitConfig(WeightGrid(4))  # W4A8: int4 per-channel weights, the scheme's int8 embeddings


@pytest.fixture(scope="module")
def init_ranges(tiny_onnx, glue_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("qat") / "init.ranges.json"
    calibrate(onnx.load(str(tiny_onnx)), glue_train_sequences("rte", glue_dir, 16, 0), progress=False).save(path)
    return path


def _module_and_ort(module, qdq, fp32, count=8):
    """The module's logits and ONNX Runtime's for ``qdq`` as written (no fusion), sentence by sentence."""
    session, encoder = cpu_session(qdq, fused=False), Encoder.from_model(fp32)
    for text in shipped_sentences()[:count]:
        feeds = encoder.feeds([text])
        with torch.no_grad():
            ours = module(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
        yield ours, session.run(None, feeds)[0]


@pytest.mark.parametrize("scheme,learned", [("w8a8", 35), ("mp", 37), ("w8a32", 0)])
def test_untrained_module_computes_the_qdq_graph(tiny_onnx, init_ranges, scheme, learned):
    """Before any training, the module reproduces ONNX Runtime's unfused QDQ arithmetic exactly."""
    fp32, ranges, config = onnx.load(str(tiny_onnx)), RangeTable.load(init_ranges), QatConfig("rte", scheme, LOWBIT)
    qdq, sources = deployed_model(fp32, config, ranges), range_sources(fp32, config, ranges)
    module = trainable_module(fp32, config, ranges)
    # Learned ranges: one per ranges-file tensor that sets a quantizer's scale (a Transpose or Reshape output
    # shares its input's; the softmax output's is fixed); weights: 14 linear layers + the word embedding table.
    assert len(module.ranges) == learned and len(module.sites) == 15
    # Every quantizer a ranges-file tensor sets is learned, mp's 8/16-bit converts of one tensor too (one range).
    set_by_source = [n.input[1] for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in sources]
    assert set_by_source and set(set_by_source) <= set(module.source_of) if learned else not module.source_of
    for ours, ort_logits in _module_and_ort(module, qdq, fp32):
        # With activations quantized the output's own quantizer absorbs float summation order: equal bits.
        # Weights only (w8a32): float32 reassociation between PyTorch and ORT MatMuls, ~1e-7 relative.
        np.testing.assert_allclose(ours, ort_logits, rtol=0 if learned else 1e-5, atol=0)


def test_peg_module_trains_the_fp32_weights_through_the_permuted_split_ones_and_computes_the_qdq_graph(
    tiny_onnx, init_ranges
):
    """PEG's float model holds permuted, split copies of the FP32 weights; QAT trains the FP32 weights (the
    checkpoint's) through the same gathers, and before training computes ONNX Runtime's QDQ arithmetic exactly."""
    fp32, ranges = onnx.load(str(tiny_onnx)), RangeTable.load(init_ranges)
    config = QatConfig("rte", "peg", LOWBIT)
    module = trainable_module(fp32, config, ranges)
    floats = {i.name for i in fp32.graph.initializer}
    assert set(module.learned_weights()) <= floats  # what is trained: FP32 initializers, by their own names
    gathered = [t for t, (_, index) in module.views.items() if index is not None]
    assert len(gathered) > len(module.learned_weights())  # split: several sites read one FP32 weight
    for ours, ort_logits in _module_and_ort(module, deployed_model(fp32, config, ranges), fp32):
        np.testing.assert_array_equal(ours, ort_logits)


def test_weight_views_refuse_a_scheme_that_changes_weight_values(tiny_onnx, init_ranges):
    """SmoothQuant rescales weights: no gather of the FP32 ones gives them, so QAT must not pretend it trains them."""
    fp32, ranges = onnx.load(str(tiny_onnx)), RangeTable.load(init_ranges)
    scheme = config_for("smoothquant")
    floats = scheme_floats(fp32, scheme, ranges)
    names = [s.name for s in weight_sites(quantize(fp32, scheme, ranges)[0], floats)]
    with pytest.raises(RuntimeError, match="not a gather|mixes"):
        weight_views(fp32, floats, names, lambda m: scheme_floats(m, scheme, ranges_for(ranges, m)))


def test_a_trained_embedding_table_moves_its_gathered_scale_as_the_writer_does(tiny_onnx, init_ranges):
    """ONNX Runtime quantizes the word Gather's output with the table's own min-max scale, and the writer
    recomputes it from the trained table. The module must follow the table (it once kept the scale the
    graph was built with: on MiniLM that alone moved the dev logits, bench/qat_agreement.py)."""
    fp32, ranges = onnx.load(str(tiny_onnx)), RangeTable.load(init_ranges)
    config = QatConfig("rte", "w8a8", lowbit=LOWBIT)
    module = trainable_module(fp32, config, ranges)
    (table,) = set(module.table_of.values())
    name = module.sites[table].name
    with torch.no_grad():
        module.parameter(name).mul_(1.5)  # as training might: a new min and max
    module.refresh_weight_scales()
    trained = {name: module.parameter(name).detach().numpy()}
    written = with_weights(fp32, trained)
    for ours, ort_logits in _module_and_ort(module, deployed_model(written, config, ranges_for(ranges, written)), fp32):
        np.testing.assert_array_equal(ours, ort_logits)


def test_learned_layernorm_input_ranges_move_the_int32_bias_grids_as_the_writer_does(tiny_onnx, init_ranges):
    """ONNX Runtime writes LayerNorm's beta as int32 on the grid input scale x gamma scale; QAT learns the
    input's range, so the module re-derives that grid (it once kept the grid the graph was built with)."""
    fp32, ranges = onnx.load(str(tiny_onnx)), RangeTable.load(init_ranges)
    rng = np.random.default_rng(0)  # the tiny model's betas are zero, which every grid rounds to zero
    betas = {
        i.name: rng.normal(0, 0.5, i.dims).astype(np.float32) for i in fp32.graph.initializer if "LayerNorm.b" in i.name
    }
    fp32 = with_weights(fp32, betas)
    ranges = RangeTable({**ranges.model, "fingerprint": model_fingerprint(fp32)}, ranges.calibration, ranges.tensors)
    config = QatConfig("rte", "w8a8", lowbit=LOWBIT)
    module = QdqModule(
        deployed_model(fp32, config, ranges), prepare(fp32), ranges, LOWBIT, range_sources(fp32, config, ranges)
    )
    assert module.biases
    with torch.no_grad():
        for learned in module.ranges.values():
            learned.log_scale.add_(0.3)  # every range 35% wider
    deployed = deployed_model(fp32, config, learned_range_table(ranges, module.learned_ranges(), fp32))
    written = {i.name: onnx.numpy_helper.to_array(i) for i in deployed.graph.initializer}
    dequantized = {
        n.output[0]: written[n.input[0]].astype(np.float32) * written[n.input[1]]
        for n in deployed.graph.node
        if n.op_type == "DequantizeLinear" and n.output[0] in module.biases
    }
    assert set(dequantized) == set(module.biases)
    for name, want in dequantized.items():
        with torch.no_grad():
            np.testing.assert_array_equal(module._bias(name, module.constants).numpy(), want)


def test_fused_fake_quantizer_gives_the_composed_values_and_gradients():
    """The memory-lean quantize-dequantize equals ``dequantize(quantize(x))`` of PyTorch ops: forward bit for bit,
    gradients of the input and of the learned range to float32 rounding (the composed path multiplies and
    divides by the scale where the fused one does not)."""
    torch.manual_seed(0)
    x0 = torch.randn(4, 7, 5) * 3
    x0[0, 0, :3] = torch.tensor([0.5, 1.5, 2.5]) * (6.0 / 255)  # ties: half to even, as ONNX
    results = []
    for fused in (False, True):
        x, learned = x0.clone().requires_grad_(True), LearnedRange(-2.0, 4.0)
        scale, zero_point = learned.scale_zero_point(255)
        if fused:
            y = fake_quantize(x, scale, zero_point, 0, 255)
        else:
            y = dequantize(quantize_linear(x, scale, zero_point, 0, 255), scale, zero_point)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        results.append((y.detach(), x.grad, learned.log_scale.grad))
    (y0, gx0, s0), (y1, gx1, s1) = results
    np.testing.assert_array_equal(y1.numpy(), y0.numpy())
    np.testing.assert_allclose(gx1.numpy(), gx0.numpy(), rtol=1e-6, atol=0)
    assert gx1.eq(0).any() and gx1.ne(0).any()  # values outside the grid stop the gradient
    np.testing.assert_allclose(float(s1), float(s0), rtol=1e-5)


def test_quantize_rounds_half_to_even_and_clamps_like_quantize_linear():
    x = torch.tensor([-1.0, 0.5, 1.5, 2.5, 300.0, -0.25])
    np.testing.assert_array_equal(
        quantize_linear(x, torch.tensor(1.0), torch.tensor(0.0), 0, 255).numpy(), [0, 0, 2, 2, 255, 0]
    )
    learned = LearnedRange(-1.0, 3.0)  # ONNX Runtime: scale 4/255, zero point round(1 / scale) = 64
    scale, zero_point = learned.scale_zero_point(255)
    assert float(zero_point) == 64.0 and float(scale) == np.float32(4.0 / 255)


@pytest.mark.parametrize("scheme", ["w8a8", "mp", "peg"])
def test_qat_then_export_and_quantize_deploys_what_training_simulated(
    tiny_bert_dir, glue_dir, init_ranges, tmp_path, scheme
):
    # With distillation and the ranges' own rate: every part of the training step runs. mp: its 16-bit tensors,
    # their 8-bit converts (learned with the same range) and its output range, re-estimated by the writer;
    # peg: the checkpoint's weights trained through the permuted, split ones, group ranges re-estimated.
    epochs = 2 if scheme == "w8a8" else 1  # two epochs once: the writer's constants are taken between epochs
    config = QatConfig("rte", scheme, epochs=epochs, batch_size=8, lr=1e-3, range_lr=3e-3, distill=0.5, lowbit=LOWBIT)
    record = run_qat(str(tiny_bert_dir), glue_dir, init_ranges, tmp_path / "out", config, progress=False)
    assert [h["epoch"] for h in record["history"]] == list(range(1, epochs + 1))
    learned = RangeTable.load(tmp_path / "out" / "ranges.json")
    initial = RangeTable.load(init_ranges)
    assert any(learned.range(t) != initial.range(t) for t in initial.tensors)  # the ranges were trained
    # The documented path: qonnx export CHECKPOINT, qonnx quantize --ranges ranges.json (+ the same low-bit weights).
    export_model(str(tmp_path / "out" / "checkpoint"), tmp_path / "qat.onnx")
    fp32 = onnx.load(str(tmp_path / "qat.onnx"))
    deployed = quantize(fp32, config_for(scheme, **LOWBIT.fields()), learned)[0]
    dev = load_task("rte", "dev", glue_dir)
    feeds = Encoder.from_model(fp32).feeds(
        dev.texts_a, dev.texts_b
    )  # one batch padded to the longest, as QAT's dev run
    simulated = np.load(tmp_path / "out" / DEV_LOGITS)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in deployed.graph.initializer}
    step = float(inits["logits_scale"])
    # The logits' range on an 8-bit grid (mp writes them in 16 bits): the error of ORT's fixed-point
    # requantization comes from the 8-bit tensors upstream, whatever grid the output itself has.
    coarse = step * (np.iinfo(inits["logits_zero_point"].dtype).max / 255)
    as_written = cpu_session(deployed, fused=False).run(None, feeds)[0]
    fused = cpu_session(deployed).run(None, feeds)[0]
    # QDQ arithmetic as written: the same integers and scales; only float summation order differs
    # (PyTorch vs ORT MatMul), which can move a value across a rounding boundary: at most 2 output steps.
    assert np.abs(as_written - simulated).max() <= 2 * step
    # ORT's integer kernels requantize with fixed-point multipliers: a few 8-bit steps, the same classes.
    assert np.mean(fused.argmax(1) == simulated.argmax(1)) >= 0.99
    assert np.abs(fused - simulated).max() <= 8 * coarse
    # Nothing trained is lost on the way to the file: QAT's own output, rebuilt as a module, computes the dev
    # logits training reported, bit for bit (the same PyTorch arithmetic on the same values). Learning a range
    # the writer ties to another one (a Transpose output's) or fixes (the Softmax output's) would break this.
    written = onnx.load(str(tmp_path / "out" / "model.qdq.onnx"))
    rebuilt = trainable_module(fp32, config, learned)
    assert [n.op_type for n in rebuilt.nodes] == [n.op_type for n in written.graph.node]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out" / "checkpoint")
    with torch.no_grad():
        again = predict(rebuilt, encode(tokenizer, dev, config.max_length), 64, tokenizer.pad_token_id or 0, 2)
    np.testing.assert_array_equal(again, simulated)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: `--device cuda` is checked on a GPU host")
def test_qat_on_cuda_deploys_what_it_simulated(tiny_bert_dir, glue_dir, init_ranges, tmp_path):
    """Trained on the GPU, the written model computes the dev logits training reported, as on CPU: within
    2 output steps of ONNX Runtime as written (float summation order differs between the two)."""
    config = QatConfig("rte", "w8a8", epochs=1, batch_size=8, lr=1e-3, distill=0.5, lowbit=LOWBIT)
    run_qat(str(tiny_bert_dir), glue_dir, init_ranges, tmp_path / "out", config, progress=False, device="cuda")
    written = onnx.load(str(tmp_path / "out" / "model.qdq.onnx"))
    dev = load_task("rte", "dev", glue_dir)
    feeds = Encoder.from_model(written).feeds(dev.texts_a, dev.texts_b)
    step = float(next(onnx.numpy_helper.to_array(i) for i in written.graph.initializer if i.name == "logits_scale"))
    as_written = cpu_session(written, fused=False).run(None, feeds)[0]
    assert np.abs(as_written - np.load(tmp_path / "out" / DEV_LOGITS)).max() <= 2 * step


def test_qat_refuses_ranges_of_another_model(tiny_bert_dir, glue_dir, other_model_ranges, tmp_path):
    with pytest.raises(UsageError, match="calibrated on another model"):
        run_qat(str(tiny_bert_dir), glue_dir, other_model_ranges, tmp_path / "out", QatConfig("rte"), progress=False)
    assert not (tmp_path / "out" / "ranges.json").exists()


@pytest.fixture
def other_model_ranges(init_ranges, tmp_path):
    ranges = RangeTable.load(init_ranges)
    ranges.model = {**ranges.model, "fingerprint": "0" * 16, "source": "another model"}
    path = tmp_path / "other.ranges.json"
    ranges.save(path)
    return path


def test_qat_scheme_and_settings_are_checked():
    with pytest.raises(UsageError, match="this version trains w8a8, w8a32, mp, peg"):
        QatConfig("rte", scheme="smoothquant")  # its weights are rescaled, not gathered: not trainable as the FP32 ones
    with pytest.raises(UsageError, match="`batch_size` >= 1"):
        QatConfig("rte", batch_size=0)
    with pytest.raises(UsageError, match="`range_lr` > 0"):
        QatConfig("rte", range_lr=0.0)
    with pytest.raises(UsageError, match=r"`distill=1.5` is a weight in \[0, 1\]"):
        QatConfig("rte", distill=1.5)


def test_distillation_loss_is_the_kl_divergence_from_the_fp32_model():
    from qonnx_bert.training.qat import distillation_loss

    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))

    def log_softmax(x):
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    p, log_p, log_q = np.exp(log_softmax(teacher)), log_softmax(teacher), log_softmax(student)
    want = np.mean(np.sum(p * (log_p - log_q), axis=1))
    got = distillation_loss(torch.from_numpy(student), torch.from_numpy(teacher), 3)
    np.testing.assert_allclose(float(got), want, rtol=1e-12)  # float64 throughout
    regression = distillation_loss(torch.from_numpy(student[:, :1]), torch.from_numpy(teacher[:, :1]), 1)
    np.testing.assert_allclose(float(regression), np.mean((student[:, 0] - teacher[:, 0]) ** 2), rtol=1e-12)


def test_ranges_train_at_their_own_rate_relative_to_their_size():
    """``range_lr``: the ranges' own group. Adam's first step moves each parameter by its learning rate
    (its normalised gradient is +-1), so the step sizes show which rate each parameter got; a range's
    bounds change by that rate relative to their size (here e^0.01 - 1), whatever the range's size."""
    from qonnx_bert.inputs.finetune import make_optimizer

    linear, learned = torch.nn.Linear(3, 2), LearnedRange(-1.0, 3.0)
    model = torch.nn.ModuleDict({"linear": linear, "range": learned})
    recipe = {"lr": 1e-5, "weight_decay": 0.0, "warmup_ratio": 0.0}
    optimizer, _ = make_optimizer(model, recipe, 10, (list(learned.parameters()), 1e-2))
    before = [p.detach().clone() for p in (linear.weight, learned.lo, learned.hi)]
    (linear(torch.ones(1, 3)).sum() + learned.hi - 2 * learned.lo).backward()
    optimizer.step()
    moved = [float((p.detach() - b).abs().max()) for p, b in zip((linear.weight, learned.lo, learned.hi), before)]
    grow = np.expm1(1e-2)
    np.testing.assert_allclose(moved, [1e-5, 1 * grow, 3 * grow], rtol=1e-2)  # float32 steps near 0.5: ~3e-8 apart


def test_a_learned_range_keeps_its_zero_point_and_short_side():
    """LSQ's gradient reaches a range only through its scale. Shrunk hard (Adam, 300 steps of 1e-2), a
    range keeps the zero point PTQ gave it and so its short negative side; learning the bounds apart, the
    two got equal and opposite steps and the short side was clipped away whole."""
    from qonnx_bert.inputs.finetune import make_optimizer

    learned = LearnedRange(-6.0, 91.0)
    zero_point = float(learned.scale_zero_point(255)[1])
    recipe = {"lr": 1e-2, "weight_decay": 0.0, "warmup_ratio": 0.0}
    optimizer, _ = make_optimizer(learned, recipe, 10**6, (list(learned.parameters()), 1e-2))
    for _ in range(300):
        learned.scale_zero_point(255)[0].backward()  # any loss that wants a finer grid
        optimizer.step()
        optimizer.zero_grad()
    lo, hi = learned.range()
    assert hi < 91.0 / 4 and lo < 0  # shrunk over fourfold, the negative side kept
    assert float(learned.scale_zero_point(255)[1]) == zero_point
    np.testing.assert_allclose(lo / hi, -6.0 / 91.0, rtol=1e-6)


def _held_tensors(obj, found: list) -> list:
    """Every tensor ``obj`` holds: in its attributes, their dicts and tuples, and its submodules'."""
    if isinstance(obj, torch.Tensor):
        found.append(obj)
    elif isinstance(obj, dict):
        for value in obj.values():
            _held_tensors(value, found)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _held_tensors(value, found)
    elif isinstance(obj, torch.nn.Module):
        _held_tensors(vars(obj), found)
    return found


@pytest.mark.parametrize("scheme", ["w8a8", "peg"])
def test_moving_the_module_moves_every_tensor_it_holds(tiny_onnx, init_ranges, scheme):
    """``module.to(device)`` (``--device cuda``) must leave no tensor behind: constants, scales, indices and
    biases live in plain dicts. Moved here by a copy to new memory (this machine has no GPU): every tensor
    the module holds afterwards is a copy, and the module computes what it did."""
    fp32, ranges = onnx.load(str(tiny_onnx)), RangeTable.load(init_ranges)
    module = trainable_module(fp32, QatConfig("rte", scheme, lowbit=LOWBIT), ranges)
    module.refresh_weight_scales()
    feeds = Encoder.from_model(fp32).feeds(["a sentence to run twice"])
    batch = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        before_logits = module(**batch)
    before = [t.detach() for t in _held_tensors(module, []) if t.numel()]  # storages kept: no address reused
    old = {t.data_ptr() for t in before}
    module._apply(lambda t: t.clone())
    after = [t for t in _held_tensors(module, []) if t.numel()]
    assert len(after) == len(before) and not [t.shape for t in after if t.data_ptr() in old]
    with torch.no_grad():
        assert torch.equal(module(**batch), before_logits)
