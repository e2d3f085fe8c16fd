"""Export: ONNX Runtime agrees with PyTorch, metadata travels with the model, shapes are right."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.modelinfo import read_info
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.export import OPSET, export_model, parse_static_shape


def _dims(model):
    return {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}


def test_tiny_export_matches_torch_on_padded_batch(tiny_bert_dir, tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    assert model.opset_import[0].version >= OPSET
    dims = _dims(model)
    assert set(dims) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(isinstance(d, str) for d in dims["input_ids"])  # dynamic batch and sequence
    # Independent reference: PyTorch eager on sentences of different lengths (padding exercised).
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    torch_model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, attn_implementation="eager").eval()
    texts = ["short one", "a much longer sentence with many more words in it than the first", "mid length text"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = torch_model(**enc).logits.numpy()
    got = ort.InferenceSession(str(tiny_onnx)).run(None, {k: v.numpy() for k, v in enc.items()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)  # the export's own acceptance bound


def test_embedded_tokenizer_matches_hf_tokenizer(tiny_bert_dir, tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    info = read_info(model)
    assert info.num_labels == 2 and info.static_shape is None
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    feeds = Encoder.from_model(model).feeds(["Hello there!", "x"], ["second part", "y z"])
    ref = tok(["Hello there!", "x"], ["second part", "y z"], padding=True, return_tensors="np")
    for key in feeds:
        np.testing.assert_array_equal(feeds[key], ref[key])


def test_static_shape_export(tiny_bert_dir, tmp_path):
    out = tmp_path / "static.onnx"
    export_model(str(tiny_bert_dir), out, static_shape=(1, 16))
    model = onnx.load(str(out))
    assert _dims(model)["input_ids"] == [1, 16]
    feeds = Encoder.from_model(model).feeds(["a short sentence"])
    assert feeds["input_ids"].shape == (1, 16)
    assert ort.InferenceSession(str(out)).run(None, feeds)[0].shape == (1, 2)


@pytest.mark.parametrize("text", ["1x128", "0,128", "1,4", "a,b"])
def test_bad_static_shape(text):
    with pytest.raises(UsageError, match="static_shape"):
        parse_static_shape(text)


def test_unknown_source_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError):
        export_model(str(tmp_path / "nope"), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
