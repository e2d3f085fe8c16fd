"""Models over protobuf's 2 GB: external data written and read back (locations outside the model's folder:
tests/core/test_files.py).

A real 2 GB model is a benchmark (bench/large_geometry.py), not a test: here the limit is lowered to
1 MB so the tiny BERT (4 MB of FP32 weights) takes every path a large model takes.
"""

from __future__ import annotations

from qonnx_bert.cli import main
from qonnx_bert.core.files import external_data_path
from qonnx_bert.core.metrics import sqnr_db
from qonnx_bert.core.modelinfo import load_onnx
from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.sequences import shipped_sentences

SMALL_LIMIT = 1 << 20


def _one_line_error(capsys, argv, message):
    code = main(argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line or "Traceback" in line]
    assert code == 2 and len(errors) == 1 and message in errors[0], errors


def test_large_model_round_trip_with_external_data(tiny_bert_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("qonnx_bert.core.files.PROTOBUF_LIMIT", SMALL_LIMIT)
    fp32 = tmp_path / "m.onnx"
    _one_line_error(capsys, ["export", str(tiny_bert_dir), "-o", str(fp32)], "pass --external-data")
    assert not fp32.exists() and not list(tmp_path.iterdir())  # nothing half-written

    assert main(["export", str(tiny_bert_dir), "-o", str(fp32), "--external-data"]) == 0
    assert fp32.stat().st_size < SMALL_LIMIT < external_data_path(fp32).stat().st_size
    ranges, out = tmp_path / "ranges.json", tmp_path / "q.onnx"
    assert main(["calibrate", str(fp32), "-n", "8", "-o", str(ranges)]) == 0
    quantize = ["quantize", str(fp32), "--scheme", "peg", "--ranges", str(ranges), "-o", str(out)]
    _one_line_error(capsys, quantize, "over protobuf's 2 GB limit")
    assert not out.exists()
    assert main([*quantize, "--external-data"]) == 0

    model, quantized = load_onnx(fp32), load_onnx(out)
    feeds = Encoder.from_model(model).feeds(shipped_sentences()[:6])
    reference = cpu_session(model).run(None, feeds)[0]  # sessions of models over the limit: from files
    sqnr = sqnr_db(reference, cpu_session(quantized).run(None, feeds)[0])
    assert sqnr >= 40.0, f"{sqnr:.1f} dB"  # as the in-memory path (tests/graph/test_canonicalize.py)
