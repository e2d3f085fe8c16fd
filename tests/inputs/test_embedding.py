"""Feature extraction: the exported sentence embedding equals sentence-transformers' pooling of
PyTorch's hidden state, schemes run on a headless encoder, and zero-shot STS is MTEB's metric."""

import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from transformers import AutoModel, AutoTokenizer

from qonnx_bert.analysis.evaluate import evaluate, shipped_sts_dir
from qonnx_bert.calibration.calibrate import calibrate
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.modelinfo import EMBEDDING, read_info
from qonnx_bert.graph.prepare import prepare
from qonnx_bert.graph.roles import find_roles
from qonnx_bert.inputs.embedding import OUTPUT_NAMES
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.export import export_model
from qonnx_bert.inputs.glue import load_task
from qonnx_bert.inputs.glue.tasks import limit_split
from qonnx_bert.inputs.sequences import sample_sequences, shipped_sentences
from qonnx_bert.passes.permute_stream import permute_stream
from qonnx_bert.quantize import config_for, quantize
from qonnx_bert.targets.htp_check import check_htp
from qonnx_bert.targets.qnn import resolve_soc
from tests.targets.test_qnn import needs_qnn

TEXTS = ["short one", "a much longer sentence with many more words in it than the first", "mid length text"]


@pytest.fixture(scope="module")
def exported(tiny_bert_dir, tmp_path_factory):
    """The tiny model exported by `qonnx export` in a subprocess (its console set-up is global) and what it printed."""
    out = tmp_path_factory.mktemp("embedding") / "tiny.embedding.onnx"
    args = ["export", str(tiny_bert_dir), "--task", "feature-extraction", "-o", str(out)]
    proc = subprocess.run([sys.executable, "-m", "qonnx_bert", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out, (proc.stdout + proc.stderr).splitlines()


@pytest.fixture(scope="module")
def embedding_onnx(exported):
    return exported[0]


@pytest.fixture(scope="module")
def torch_hidden(tiny_bert_dir):
    """PyTorch's last hidden state and mask for TEXTS, padded to the longest (padding exercised)."""
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(tiny_bert_dir, attn_implementation="eager").eval()(**enc).last_hidden_state
    return {k: v.numpy() for k, v in enc.items()}, hidden.numpy()


def _reference_embedding(hidden, mask):
    """sentence-transformers' Pooling(mean) + Normalize, written out independently in NumPy."""
    m = mask[..., None].astype(np.float64)
    mean = (hidden * m).sum(1) / m.sum(1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def test_export_matches_pytorch_pooling(embedding_onnx, torch_hidden):
    feeds, hidden = torch_hidden
    model = onnx.load(str(embedding_onnx))
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    assert sum(n.op_type == "LpNormalization" for n in model.graph.node) == 1  # F.normalize, fused
    assert "ReduceL2" not in {n.op_type for n in model.graph.node}
    assert read_info(model).head == EMBEDDING and read_info(model).num_labels == 0
    embedding, last = ort.InferenceSession(str(embedding_onnx)).run(None, feeds)
    # 1e-4: the export's own acceptance bound (float32 kernels of ORT vs PyTorch).
    np.testing.assert_allclose(last, hidden, atol=1e-4, rtol=0)
    np.testing.assert_allclose(embedding, _reference_embedding(hidden, feeds["attention_mask"]), atol=1e-4, rtol=0)
    assert feeds["attention_mask"].min() == 0  # the batch really had padding to exclude


def test_output_role_of_a_headless_encoder_is_the_last_hidden_state(embedding_onnx):
    roles = find_roles(prepare(onnx.load(str(embedding_onnx))))
    assert roles.tensor("output") == "last_hidden_state" == roles.tensor(f"layer.{roles.num_layers - 1}.ffn.layernorm")


@pytest.fixture(scope="module")
def ranges(embedding_onnx):
    return calibrate(onnx.load(str(embedding_onnx)), sample_sequences(shipped_sentences(), None, 16, 0, "shipped"))


def _embeddings(model):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    encoder = Encoder.from_model(model)
    return np.concatenate([session.run(None, encoder.feeds([t]))[0] for t in TEXTS])


@pytest.mark.parametrize(("scheme", "options"), [("w8a8", {}), ("mp", {}), ("peg", {"groups": 3})])
def test_schemes_run_on_an_embedding_model(embedding_onnx, ranges, scheme, options):
    fp32 = onnx.load(str(embedding_onnx))
    quantized, _ = quantize(fp32, config_for(scheme, **options), ranges)
    assert [o.name for o in quantized.graph.output] == list(OUTPUT_NAMES)
    producers = {o: n for n in quantized.graph.node for o in n.output}
    pooling = [n for n in quantized.graph.node if n.op_type in ("ReduceSum", "Div", "LpNormalization")]
    assert {n.op_type for n in pooling} == {"ReduceSum", "Div", "LpNormalization"}  # the pooling head, fused
    for node in pooling:  # quantized like every other op, so HTP runs the pooling in fixed point
        assert producers[node.input[0]].op_type == "DequantizeLinear", node.name
    got, want = _embeddings(quantized), _embeddings(fp32)
    # Unit length up to the output's uint8 grid: step <= 2/255 over 32 dims, so |norm - 1| <= sqrt(32) * step/2.
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=np.sqrt(32) / 255)
    # A random-weight 2-layer model at 8 bits: cosine to the FP32 embedding well above chance (measured > 0.9).
    assert np.min(np.sum(got * want, axis=1)) > 0.8


def test_folded_permutation_restores_the_hidden_state_output_exactly(embedding_onnx):
    """The model-wide PEG permutation reaches the graph output: one Gather restores its order (FP32 exact)."""
    prepared = prepare(onnx.load(str(embedding_onnx)))
    roles = find_roles(prepared)
    graph = ir.from_proto(prepared)
    values = {v.name: v for n in graph.graph for v in n.outputs}
    perm = np.random.default_rng(0).permutation(32)
    moved = permute_stream(graph.graph, values[roles.tensor("embeddings.layernorm")], perm)
    folded = ir.to_proto(graph)
    assert "last_hidden_state.permuted" in moved and "last_hidden_state" not in moved
    restore = [n for n in folded.graph.node if n.output[0] == "last_hidden_state"]
    assert [n.op_type for n in restore] == ["Gather"] and restore[0].input[0] == "last_hidden_state.permuted"
    feeds = Encoder.from_model(prepared).feeds(TEXTS)
    run = lambda m: ort.InferenceSession(m.SerializeToString()).run(None, feeds)  # noqa: E731
    for got, want in zip(run(folded), run(prepared), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)  # only float32 summation order changes


def test_zero_shot_sts_matches_scipy_on_pytorch_embeddings(embedding_onnx, tiny_bert_dir):
    split = limit_split(load_task("stsb", "dev", shipped_sts_dir()), 40)
    result = evaluate(onnx.load(str(embedding_onnx)), split, progress=False)
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModel.from_pretrained(tiny_bert_dir, attn_implementation="eager").eval()

    def embed(texts):
        enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            return _reference_embedding(model(**enc).last_hidden_state.numpy(), enc["attention_mask"].numpy())

    cosines = np.sum(embed(split.texts_a) * embed(split.texts_b), axis=1)
    np.testing.assert_allclose(result.logits, cosines, atol=1e-4)
    assert result.metrics["cosine_spearman"] == pytest.approx(spearmanr(cosines, split.labels).statistic, abs=1e-3)
    assert result.metrics["cosine_pearson"] == pytest.approx(pearsonr(cosines, split.labels).statistic, abs=1e-3)


def test_embedding_model_on_a_classification_task_is_refused(embedding_onnx, glue_dir):
    split = limit_split(load_task("rte", "dev", glue_dir), 4)
    with pytest.raises(UsageError, match="use `task=stsb`"):
        evaluate(onnx.load(str(embedding_onnx)), split, progress=False)


@needs_qnn
@pytest.mark.parametrize(("scheme", "options"), [("w8a8", {}), ("peg", {"groups": 3})])
def test_static_embedding_model_runs_whole_and_quantized_on_htp(tiny_bert_dir, tmp_path_factory, scheme, options):
    """Pooling and L2 normalisation included: no op left in float, none on the CPU (the strict check)."""
    path = tmp_path_factory.mktemp("embedding_htp") / "tiny.embedding.1x32.onnx"
    export_model(str(tiny_bert_dir), path, static_shape=(1, 32), task="feature-extraction")
    fp32 = onnx.load(str(path))
    ranges = calibrate(fp32, sample_sequences(shipped_sentences(), None, 8, 0, "shipped"), progress=False)
    report = check_htp(quantize(fp32, config_for(scheme, **options), ranges)[0], resolve_soc("sm8650"))
    assert report.ok, "\n".join(f.line() for f in report.findings)


def test_export_command_is_quiet_and_says_what_it_wrote(exported):
    """No transformers load report, torch/onnxscript chatter or progress bar: one closing line."""
    out, lines = exported
    assert len(lines) == 1 and lines[0].startswith(f"wrote {out}"), lines


@pytest.fixture(scope="module")
def headless_dir(tiny_bert_dir, tmp_path_factory):
    """The tiny encoder saved without its classification head (``BertModel``), as sentence-transformers ship one."""
    out = tmp_path_factory.mktemp("headless")
    AutoModel.from_pretrained(tiny_bert_dir).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(out)
    return out


def test_eval_of_a_headless_checkpoint_scores_sts_zero_shot_like_its_onnx_export(headless_dir, glue_dir, capsys):
    """PyTorch's zero-shot STS-B score equals the ONNX embedding export's (the same pooling, two runtimes)."""
    from qonnx_bert.cli import main

    onnx_path = headless_dir / "e.onnx"
    assert main(["export", str(headless_dir), "--task", "feature-extraction", "-o", str(onnx_path)]) == 0
    scores = []
    for model in (headless_dir, onnx_path):
        capsys.readouterr()
        assert main(["eval", str(model), "--task", "stsb", "--data-dir", str(glue_dir)]) == 0
        scores.append(float(capsys.readouterr().out.split("score=")[1].split()[0]))
    assert scores[0] == pytest.approx(scores[1], abs=0.01)  # printed to 2 decimals; cosines agree to ~1e-6


def test_eval_of_a_headless_checkpoint_on_a_classification_task_is_refused(headless_dir, glue_dir, capsys):
    """Its seeded stand-in head would score at chance with exit 0."""
    from qonnx_bert.cli import main

    assert main(["eval", str(headless_dir), "--task", "rte", "--data-dir", str(glue_dir)]) == 2
    assert "has no trained classification head" in capsys.readouterr().err
