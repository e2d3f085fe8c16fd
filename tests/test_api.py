"""The public Python API: lazy, and the README's example runs as written (on the tiny model)."""

import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import qonnx_bert as qb

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("```python\n", text.index("## Python API")) + len("```python\n")
    return text[start : text.index("```", start)]


def test_import_is_lazy():
    code = "import sys, qonnx_bert; assert 'onnx' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_quantize_stays_the_function_once_the_subpackage_is_imported():
    from qonnx_bert.quantize import PegConfig, quantize

    assert callable(qb.quantize) and qb.quantize is not quantize and qb.PegConfig is PegConfig
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        qb.nope  # noqa: B018


def test_readme_example_runs(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = readme_example().replace('"minilm-l6"', repr(str(tiny_bert_dir)))
    exec(compile(code, str(README), "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("scheme w8a8:") and lines[1].startswith("scheme peg:")
    assert "Spearman" in lines[0] and lines[2].startswith("cpu")
    for name in ("emb.onnx", "emb.w8a8.onnx", "emb.peg.onnx"):
        onnx.checker.check_model(str(tmp_path / name))


def test_qat_trains_and_writes_through_the_api(tiny_bert_dir, tiny_onnx, glue_dir, tmp_path):
    qb.calibrate(str(tiny_onnx), num_sequences=16, output=tmp_path / "ranges.json")
    config = qb.QatConfig("rte", scheme="mp", epochs=1, batch_size=8, max_train_examples=16)
    out = tmp_path / "out"
    record = qb.qat(str(tiny_bert_dir), config, tmp_path / "ranges.json", out, data_dir=glue_dir, progress=False)
    assert [h["epoch"] for h in record["history"]] == [1]
    assert (out / "model.qdq.onnx").is_file() and (out / "checkpoint" / "config.json").is_file()
