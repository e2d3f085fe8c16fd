"""Issue 18's second sweep: outputs a command writes but did not declare, folders of results, resumed runs.

Each refusal is one line on stderr, exit 2, and every input byte unchanged: compile's
``.bin`` onto an input or a folder, a report onto any file of the results folder, a bench
resumed into another model's (or another ``--limit``'s) folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from qonnx_bert.cli import main


def _refused(capsys, argv: list[str], message: str) -> str:
    """Run ``argv``; it must exit 2 with ``message`` on one stderr line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    return err


# --- compile: the context binary is an output too ------------------------------------------------


def test_compile_refuses_a_bin_output_on_the_models_external_data(tiny_onnx, tmp_path, capsys, snapshot):
    model = tmp_path / "qe.onnx"
    onnx.save(onnx.load(str(tiny_onnx)), str(model), save_as_external_data=True, location="qe_ctx_qnn.bin")
    before = snapshot(tmp_path)
    _refused(capsys, ["compile", str(model), "-o", str(tmp_path)], "read from")
    assert snapshot(tmp_path) == before


def test_compile_refuses_a_bin_output_hard_linked_to_the_model(tiny_onnx, tmp_path, capsys, snapshot):
    model = tmp_path / "q.onnx"
    shutil.copy(tiny_onnx, model)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "q_ctx_qnn.bin").hardlink_to(model)
    before = snapshot(tmp_path)
    _refused(capsys, ["compile", str(model), "-o", str(tmp_path / "out")], "is the input file")
    assert snapshot(tmp_path) == before


def test_compile_refuses_a_bin_output_that_is_a_folder(tiny_onnx, tmp_path, capsys, snapshot):
    (tmp_path / "out" / "tiny_ctx_qnn.bin").mkdir(parents=True)
    before = snapshot(tmp_path)
    _refused(capsys, ["compile", str(tiny_onnx), "-o", str(tmp_path / "out")], "is an existing directory")
    assert snapshot(tmp_path) == before


# --- report: every file of the results folder is an input --------------------------------------


@pytest.fixture
def results(tmp_path, tiny_onnx) -> Path:
    """A bench results folder: the tables, a cell, ranges and a model, as `qonnx bench` leaves them."""
    root = tmp_path / "results"
    for sub in ("cells", "ranges", "models"):
        (root / "rte" / sub).mkdir(parents=True)
    doc = {"tasks": ["rte"], "variants": ["fp32"], "scores": {"fp32": {"rte": 61.5}}, "perf": None, "seeds": 1}
    (root / "results.json").write_text(json.dumps(doc))
    (root / "results.md").write_text("# GLUE benchmark\n")
    (root / "rte" / "cells" / "rte.fp32.seed0.json").write_text('{"metrics": {"score": 61.5}}')
    (root / "rte" / "ranges" / "seed0.json").write_text('{"format": "qonnx.ranges"}')
    shutil.copy(tiny_onnx, root / "rte" / "models" / "fp32.onnx")
    return root


@pytest.mark.parametrize(
    "output, html",
    [
        ("rte/cells/rte.fp32.seed0.json", False),
        ("rte/ranges/seed0.json", False),
        ("rte/models/fp32.onnx", False),
        ("rte/models/fp32.onnx", True),
        ("notes.md", False),  # a page of the folder that the report did not write
    ],
)
def test_report_refuses_an_output_on_any_file_of_the_results_folder(results, capsys, snapshot, output, html):
    (results / "notes.md").write_text("a debug table\n")
    before = snapshot(results)
    _refused(capsys, ["report", str(results), "-o", str(results / output), *(["--html"] if html else [])], "is the")
    assert snapshot(results) == before


def test_report_replaces_its_own_earlier_page(results):
    assert main(["report", str(results)]) == 0
    first = (results / "report.md").read_text()
    assert first.startswith("# qonnx report: results\n")
    assert main(["report", str(results), "--html"]) == 0
    assert main(["report", str(results)]) == 0  # report.html is not taken for a page of results
    assert (results / "report.md").read_text() == first


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("x.md", bytes(range(256)), "x.md is not UTF-8 text"),
        ("results.json", b"{}", "results.json holds no bench results"),
        ("results.json", b'{"tasks": ["rte"], "scores": {"w8a8": {"rte": NaN}}}', "the w8a8 score of rte is nan"),
    ],
)
def test_report_refuses_a_file_it_cannot_show(results, capsys, snapshot, name, content, message):
    (results / name).write_bytes(content)
    before = snapshot(results)
    _refused(capsys, ["report", str(results)], message)
    assert snapshot(results) == before


# --- bench: a resumed folder must hold this run's model and --limit ----------------------------


def _bench(out: Path, model: Path, glue_dir: Path, *extra: str) -> list[str]:
    return [
        "bench", "glue", "--model", str(model), "--tasks", "rte", "--schemes", "fp32", "--latency-runs", "0",
        "--data-dir", str(glue_dir), "-o", str(out), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def bench_dir(tiny_bert_dir, glue_dir, tmp_path_factory) -> Path:
    """A bench folder of the tiny model, --limit 4."""
    out = tmp_path_factory.mktemp("bench") / "b"
    assert main(_bench(out, tiny_bert_dir, glue_dir, "--limit", "4")) == 0
    assert json.loads((out / "rte" / "run.json").read_text())["limit"] == 4
    return out


@pytest.fixture(scope="module")
def other_bert(tiny_bert_dir, tmp_path_factory) -> Path:
    """The tiny checkpoint with other weights: what a rebuild, or another model under the same name, holds."""
    from safetensors.numpy import load_file, save_file

    out = tmp_path_factory.mktemp("other") / "bert"
    shutil.copytree(tiny_bert_dir, out)
    weights = load_file(out / "model.safetensors")
    save_file({k: v * 0.5 if v.dtype.kind == "f" else v for k, v in weights.items()}, out / "model.safetensors")
    return out


def test_bench_refuses_to_resume_another_models_folder(bench_dir, other_bert, glue_dir, capsys, snapshot):
    before = snapshot(bench_dir)
    err = _refused(capsys, _bench(bench_dir, other_bert, glue_dir, "--limit", "4"), "holds results of model")
    assert "pass a new -o directory, or delete" in err
    assert snapshot(bench_dir) == before


def test_bench_refuses_to_resume_another_limits_folder(bench_dir, tiny_bert_dir, glue_dir, capsys, snapshot):
    before = snapshot(bench_dir)
    _refused(capsys, _bench(bench_dir, tiny_bert_dir, glue_dir, "--limit", "3"), "--limit 4, not --limit 3")
    _refused(capsys, _bench(bench_dir, tiny_bert_dir, glue_dir), "not all dev examples")
    assert snapshot(bench_dir) == before


def test_bench_checks_a_folder_from_before_the_run_record(bench_dir, other_bert, tiny_bert_dir, glue_dir, capsys):
    """A folder without ``run.json`` (older bench): its FP32 export and its cells' example count decide."""
    old = bench_dir.parent / "old"
    shutil.copytree(bench_dir, old)
    (old / "rte" / "run.json").unlink()
    _refused(capsys, _bench(old, other_bert, glue_dir, "--limit", "4"), "holds results for another build")
    _refused(capsys, _bench(old, tiny_bert_dir, glue_dir, "--limit", "3"), "holds results of 4 dev examples")
    assert not (old / "rte" / "run.json").exists()
    assert main(_bench(old, tiny_bert_dir, glue_dir, "--limit", "4")) == 0  # the same run resumes, now recorded
    assert (old / "rte" / "run.json").read_text() == (bench_dir / "rte" / "run.json").read_text()
