"""Other exporters' encoders in: canonical form equal to the input, then calibrate -> quantize -> CPU provider.

Forms (a seeded 1-layer, hidden-32 BERT with random biases and LayerNorm weights, as a
trained model has): the TorchScript exporter at opset 14 (decomposed LayerNorm) and 17
(Erf GELU), opset 17 with int32 ids and no token_type_ids input, and ONNX Runtime's
transformer optimizer (SkipLayerNormalization, BiasGelu).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from qonnx_bert.cli import main
from qonnx_bert.core.metrics import sqnr_db
from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.graph.canonicalize import canonicalize
from qonnx_bert.graph.roles import find_roles
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.ingest import load_model
from qonnx_bert.inputs.sequences import shipped_sentences
from tests.conftest import torchscript_export

FORMS = ("ts14", "ts17", "ts17-int32-no-types", "ort-fused")
# Measured 57.0 dB (w8a8) and 54.7 dB (peg) on every form, the same as on the model's own export: a 1-layer random
# model has no outliers. 40 dB leaves room for kernel differences; a half-quantized LayerNorm/GELU or a wrong
# permutation falls below 20 dB.
SQNR_FLOOR_DB = 40.0


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    import torch
    from transformers import AutoModelForSequenceClassification

    from tests.conftest import build_tiny_bert

    path = build_tiny_bert(tmp_path_factory.mktemp("bert"), layers=1)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    torch.manual_seed(1)
    with torch.no_grad():  # HF initialises biases to 0 and LayerNorm weights to 1: make them trained-like
        for name, param in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(path)
    return path


def _make_form(form: str, bert_dir, folder):
    if form == "ort-fused":
        from onnxruntime.transformers.optimizer import optimize_model

        fused = optimize_model(
            str(torchscript_export(bert_dir, folder / "ts17.onnx", 17)), "bert", num_heads=2, hidden_size=32
        )
        fused.save_model_to_file(str(folder / "fused.onnx"))
        return folder / "fused.onnx"
    opset = 14 if form == "ts14" else 17
    return torchscript_export(
        bert_dir, folder / f"{form}.onnx", opset, int32="int32" in form, types="no-types" not in form
    )


@pytest.fixture(scope="module", params=FORMS)
def form(request, bert_dir, tmp_path_factory):
    return request.param, _make_form(request.param, bert_dir, tmp_path_factory.mktemp(request.param))


def _logits(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = cpu_session(model)
    types = {i.name: i.type for i in session.get_inputs()}
    cast = {k: v.astype(np.int32 if types[k] == "tensor(int32)" else np.int64) for k, v in feeds.items() if k in types}
    return session.run(None, cast)[0]


def _feeds(canonical: onnx.ModelProto) -> dict[str, np.ndarray]:
    return Encoder.from_model(canonical).feeds(shipped_sentences()[:6])


def test_canonical_form_equals_the_export(form, bert_dir):
    name, path = form
    original = onnx.load(str(path))
    before = original.SerializeToString()
    canonical = canonicalize(original, str(path)).model
    assert original.SerializeToString() == before  # the input proto is not touched
    ops = {n.op_type for n in canonical.graph.node}
    assert {"Gelu", "LayerNormalization", "Softmax"} <= ops
    assert not ops & {"Erf", "Constant", "Pow", "Sqrt", "SkipLayerNormalization", "BiasGelu", "IsNaN"}
    assert {o.domain: o.version for o in canonical.opset_import}[""] == 21
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in canonical.graph.input)
    assert find_roles(canonical).num_layers == 1
    if name == "ort-fused":
        assert {"SkipLayerNormalization", "BiasGelu"} <= {n.op_type for n in original.graph.node}
    feeds = _feeds(load_model(path, bert_dir))
    assert np.abs(_logits(original, feeds) - _logits(canonical, feeds)).max() <= 1e-4  # FP32 reassociation only


@pytest.mark.parametrize("scheme", ["w8a8", "peg"])
def test_exported_forms_calibrate_quantize_and_run(form, scheme, bert_dir, tmp_path):
    _, path = form
    ranges, out = tmp_path / "ranges.json", tmp_path / "q.onnx"
    tok = ["--tokenizer", str(bert_dir)]
    assert main(["calibrate", str(path), "-n", "8", "-o", str(ranges), *tok]) == 0
    assert main(["quantize", str(path), "--scheme", scheme, "--ranges", str(ranges), "-o", str(out), *tok]) == 0
    fp32 = load_model(path, bert_dir)
    feeds = _feeds(fp32)
    quantized = onnx.load(str(out))
    assert quantized.metadata_props  # the tokenizer travels on: eval needs no --tokenizer
    sqnr = sqnr_db(_logits(fp32, feeds), _logits(quantized, feeds))
    assert sqnr >= SQNR_FLOOR_DB, f"{form[0]} {scheme}: {sqnr:.1f} dB"


def _fused_attention_model(path):
    """A graph whose attention is ORT's fused ``Attention`` (as older transformers exports get it)."""
    from onnx import TensorProto, helper

    hidden = 8
    weights = np.zeros((hidden, 3 * hidden), np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["emb", "input_ids"], ["x"]),
            helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.INT32),
            helper.make_node("Attention", ["x", "w", "b", "mask"], ["y"], domain="com.microsoft", num_heads=2),
        ],
        "fused",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"]) for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", hidden])],
        [
            onnx.numpy_helper.from_array(np.zeros((10, hidden), np.float32), "emb"),
            onnx.numpy_helper.from_array(weights, "w"),
            onnx.numpy_helper.from_array(np.zeros(3 * hidden, np.float32), "b"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    onnx.save(model, str(path))
    return path


def _one_line_refusal(capsys, argv, message, tmp_path):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*.tmp"))


def test_fused_attention_is_refused_in_one_line(tmp_path, capsys):
    path = _fused_attention_model(tmp_path / "fused.onnx")
    before = path.read_bytes()
    argv = ["calibrate", str(path), "-n", "2", "-o", str(tmp_path / "out")]
    _one_line_refusal(capsys, argv, "fused Attention", tmp_path)
    _one_line_refusal(capsys, argv, "quantize the unfused export", tmp_path)
    assert path.read_bytes() == before


def test_missing_tokenizer_names_the_flag(form, tmp_path, capsys):
    argv = ["calibrate", str(form[1]), "-n", "2", "-o", str(tmp_path / "out")]
    _one_line_refusal(capsys, argv, "pass --tokenizer (the model", tmp_path)
    argv = [*argv, "--tokenizer", str(tmp_path / "nowhere")]
    _one_line_refusal(capsys, argv, "no fast Hugging Face tokenizer", tmp_path)


def test_a_canonical_file_is_returned_as_it_is(fp32):
    """`qonnx export`'s file is canonical already: canonicalize hands it back, no model-sized copy made."""
    result = canonicalize(fp32)
    assert result.model is fp32 and not result.changes
