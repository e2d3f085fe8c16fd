"""The demo's table on the tiny model (CI runs the real `qonnx demo` once, from the installed wheel)."""

import importlib.util

import numpy as np
import onnx
import pytest
from scipy.stats import spearmanr

from qonnx_bert.analysis.evaluate import shipped_sts_dir
from qonnx_bert.benchmarks.demo import DEMO_SCHEMES, conclusion, format_table, run_demo
from qonnx_bert.core.metrics import sqnr_db
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.glue import load_task
from qonnx_bert.inputs.glue.tasks import limit_split

PAIRS = 24
HAS_QNN = importlib.util.find_spec("onnxruntime_qnn") is not None
HTP_LABELS = ("PEG",) if HAS_QNN else ()


@pytest.fixture(scope="module")
def demo(tiny_bert_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    return run_demo(workdir, str(tiny_bert_dir), runs=2, pairs=PAIRS, htp_labels=HTP_LABELS)


def _embeddings(path, texts):
    import onnxruntime as ort

    model = onnx.load(str(path))
    session, encoder = ort.InferenceSession(str(path)), Encoder.from_model(model)
    return np.concatenate([session.run(None, encoder.feeds([t]))[0] for t in texts])


def test_rows_are_measured_on_the_files_written(demo):
    assert [r.name for r in demo.rows] == ["FP32", *(s.label for s in DEMO_SCHEMES)]
    assert demo.pairs == PAIRS
    split = limit_split(load_task("stsb", "dev", shipped_sts_dir()), PAIRS)
    texts = split.texts_a + split.texts_b
    fp32 = _embeddings(demo.workdir / "model.onnx", texts)  # one sentence per run: no padding at all
    for row, name in zip(demo.rows[1:], ("w8a8", "mp", "peg", "peg-cpu"), strict=True):
        path = demo.workdir / f"model.{name}.onnx"
        assert row.size_mb == pytest.approx(path.stat().st_size / 1e6)
        got = _embeddings(path, texts)
        # The demo batches (padding excluded by the mask): the same SQNR to a few hundredths of a dB.
        assert row.sqnr_db == pytest.approx(sqnr_db(fp32, got), abs=0.05)
        a, b = got[:PAIRS], got[PAIRS:]
        cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert row.similarity == pytest.approx(100 * spearmanr(cos, split.labels).statistic, abs=0.5)
    assert demo.rows[0].sqnr_db == float("inf") and demo.rows[0].htp == "n/a (float)"
    # The worker's strict check of the static twin (written beside the export); the others were not asked for.
    expected = ["not checked", "not checked", "pass" if HAS_QNN else "not checked", "n/a (CPU only)"]
    assert [r.htp for r in demo.rows[1:]] == expected
    assert (demo.workdir / "model.1x128.onnx").exists() == HAS_QNN


def test_table_and_sentence_fit_the_screen(demo):
    table = format_table(demo)
    assert len(table.splitlines()) == 2 + 1 + len(DEMO_SCHEMES)
    assert "| FP32 | " in table and "| — |" in table
    sentence = conclusion(demo)
    assert sentence.count(".") >= 1 and "\n" not in sentence
    w8a8 = next(r for r in demo.rows if r.name == "W8A8")
    assert f"{w8a8.sqnr_db:.1f} dB" in sentence
