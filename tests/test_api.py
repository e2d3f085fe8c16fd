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
