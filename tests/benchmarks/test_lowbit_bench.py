"""bench/lowbit.py on the tiny model: the Table 7 / Table 12 layout, sizes, and a resumable rerun."""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "lowbit.py"


def _bench():
    spec = importlib.util.spec_from_file_location("lowbit_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_lowbit_bench_writes_both_tables_and_resumes(tiny_bert_dir, glue_dir, tmp_path):
    bench = _bench()
    rows = "fp32,w8a32-e2-ptq,w4a32-ptq,w4a32-adaround"  # QAT rows call run_qat, tested in test_qat.py
    argv = ["--data-dir", str(glue_dir), "--tasks", "rte", "--checkpoint", f"rte={tiny_bert_dir}"]
    argv += ["--rows", rows, "-o", str(tmp_path)]
    assert bench.main(argv) == 0
    table = (tmp_path / "lowbit.md").read_text()
    for label in ("FP32", "W4A32 PTQ", "W4A32 AdaRound", "W8A32, 2-bit embeddings PTQ"):
        assert f"| {label} |" in table
    assert "Table 12 layout" in table
    lines = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    ratio = lambda label: float(lines[label].rstrip(" |").split(" | ")[-2])  # noqa: E731
    assert ratio("FP32") == 1.0
    # every quantized row carries its dev logits' SQNR to FP32 (the last column); FP32 itself has none
    sqnr = lambda label: lines[label].rstrip(" |").rsplit(" | ", 1)[1]  # noqa: E731
    assert sqnr("FP32") == "—" and 0 < float(sqnr("W4A32 PTQ")) < 60
    # The tiny model is 97% word embeddings (30522 x 32): at 2 bits (+ a float scale per row) the file shrinks
    # several times; the tokenizer embedded in every file (~0.7 MB) keeps it from the ideal ~10x.
    assert ratio("W8A32, 2-bit embeddings PTQ") > 3.0
    cells = sorted((tmp_path / "cells" / "rte").iterdir())
    stamps = [c.stat().st_mtime_ns for c in cells]
    assert bench.main(argv) == 0  # every cell cached: nothing recomputed
    assert [c.stat().st_mtime_ns for c in cells] == stamps
