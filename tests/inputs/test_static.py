"""`qonnx export model.onnx --static-shape B,T`: the fixed-shape twin of an exported file (inputs/static.py)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from qonnx_bert.cli import main
from qonnx_bert.core.modelinfo import read_info, static_shape
from qonnx_bert.graph.static_indexing import constant_gather_nd


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_twin_equals_pytorch_and_the_static_export(tiny_bert_dir, tiny_onnx, tmp_path):
    twin = tmp_path / "twin.onnx"
    assert main(["export", str(tiny_onnx), "--static-shape", "2,16", "-o", str(twin)]) == 0
    model = onnx.load(str(twin))
    assert static_shape(model) == (2, 16)
    assert read_info(model).static_shape == (2, 16) and read_info(model).max_length == 16
    # Independent reference: PyTorch eager on two padded sentences; bound as export's own (1e-4).
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    enc = tok(["a short one", "a longer sentence with a few more words"], padding="max_length", max_length=16)
    feeds = {k: np.asarray(v, np.int64) for k, v in enc.items()}
    torch_model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        expected = torch_model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    got = ort.InferenceSession(str(twin)).run(None, feeds)[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # the graph torch.onnx's static export gives, its mask GatherND as the HTP rules rewrite it
    static = tmp_path / "static.onnx"
    assert main(["export", str(tiny_bert_dir), "--static-shape", "2,16", "-o", str(static)]) == 0
    static_model = onnx.load(str(static))
    assert "GatherND" in _ops(static) and constant_gather_nd(static_model) == 1
    assert _ops(twin) == Counter(n.op_type for n in static_model.graph.node)
    assert not {"Shape", "Range", "GatherND"} & set(_ops(twin))


@pytest.mark.qnn
def test_twin_of_a_dynamic_file_passes_the_strict_htp_check(tiny_onnx, tmp_path, capsys):
    pytest.importorskip("onnxruntime_qnn", reason='onnxruntime-qnn not installed: pip install "qonnx-bert[qnn]"')
    twin, ranges, peg = tmp_path / "twin.onnx", tmp_path / "r.json", tmp_path / "peg.onnx"
    assert main(["export", str(tiny_onnx), "--static-shape", "1,16", "-o", str(twin)]) == 0
    assert main(["calibrate", str(twin), "-n", "8", "-o", str(ranges)]) == 0
    assert main(["quantize", str(twin), "--scheme", "peg", "--ranges", str(ranges), "-o", str(peg)]) == 0
    capsys.readouterr()
    assert main(["check", str(peg), "--ep", "qnn-htp", "--soc", "sm8650"]) == 0, capsys.readouterr().out


def test_twin_of_a_written_qdq_model_runs_whole_on_htp(tiny_onnx, tmp_path, capsys):
    """`qonnx qat` writes a dynamic QDQ model: its fixed-shape twin must need no re-quantization for HTP."""
    ranges, qdq, twin = tmp_path / "r.json", tmp_path / "w8a8.onnx", tmp_path / "w8a8.1x16.onnx"
    assert main(["calibrate", str(tiny_onnx), "-n", "8", "-o", str(ranges)]) == 0
    assert main(["quantize", str(tiny_onnx), "--scheme", "w8a8", "--ranges", str(ranges), "-o", str(qdq)]) == 0
    assert "GatherND" in _ops(qdq)  # dynamic: the mask indices are computed, so the writer keeps it
    assert main(["export", str(qdq), "--static-shape", "1,16", "-o", str(twin)]) == 0  # checks outputs within 1e-4
    assert "GatherND" not in _ops(twin)
    pytest.importorskip("onnxruntime_qnn", reason='onnxruntime-qnn not installed: pip install "qonnx-bert[qnn]"')
    capsys.readouterr()
    assert main(["check", str(twin), "--ep", "qnn-htp", "--soc", "sm8650"]) == 0, capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--static-shape", "1,16", "-o", "{src}"], "is the input file"),
        (["-o", "{out}"], "is already ONNX: pass --static-shape B,T"),
        (["--static-shape", "1,600", "-o", "{out}"], "out of range"),
    ],
)
def test_twin_refusals_are_one_line_and_leave_the_input(tiny_onnx, tmp_path, capsys, argv, message):
    src = tmp_path / "m.onnx"
    src.write_bytes(tiny_onnx.read_bytes())
    before = src.read_bytes()
    argv = [a.format(src=src, out=tmp_path / "out.onnx") for a in argv]
    assert main(["export", str(src), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert src.read_bytes() == before and not (tmp_path / "out.onnx").exists()


def test_twin_of_a_static_file_is_refused(tiny_onnx, tmp_path, capsys):
    twin = tmp_path / "twin.onnx"
    assert main(["export", str(tiny_onnx), "--static-shape", "1,16", "-o", str(twin)]) == 0
    capsys.readouterr()
    assert main(["export", str(twin), "--static-shape", "1,32", "-o", str(tmp_path / "again.onnx")]) == 2
    assert "already has the fixed shape 1,16" in capsys.readouterr().err
