"""``qonnx bench``: table rendering (golden strings), resume after a killed cell, leave-one-out rows, Ray, report."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qonnx_bert.benchmarks import glue_bench as benchmark
from qonnx_bert.benchmarks.glue_bench import (
    expand_variants,
    render_leave_one_out,
    render_peg,
    render_perf,
    render_results,
    render_table,
)
from qonnx_bert.cli import main
from qonnx_bert.core.errors import UsageError

# The paper's numbers (BERT-base) for a few rows, as a run's results.json would hold them.
RESULTS = {
    "command": "qonnx bench glue --model m --tasks rte,stsb --schemes fp32,w32a8,w8a8,peg-k3-noperm,peg-k6,loo "
    "--seeds 5",
    "tasks": ["rte", "stsb"],
    "variants": ["fp32", "w32a8", "w8a8", "peg-k3-noperm", "peg-k6", "loo-ffn.output", "loo-ffn.residual_sum"],
    "scores": {
        "fp32": {"rte": 70.40, "stsb": 89.09},
        "w32a8": {"rte": 53.07, "stsb": 82.87},
        "w8a8": {"rte": 64.98, "stsb": 81.02},
        "peg-k3-noperm": {"rte": 66.06, "stsb": 85.96},
        "peg-k6": {"rte": 69.31, "stsb": 87.92},
        "loo-ffn.output": {"rte": 55.00},
        "loo-ffn.residual_sum": {"rte": 69.00, "stsb": 88.00},
    },
    "perf": {
        "fp32": {"size_mb": 90.9, "latency_ms": 20.0, "activation_quantizers": 0, "int16_fraction": 0.0},
        "w8a8": {"size_mb": 23.1, "latency_ms": 12.5, "activation_quantizers": 190, "int16_fraction": 0.0},
    },
    "seeds": 5,
    "models": {"rte": "minilm-l6-rte", "stsb": "minilm-l6-stsb"},
    "manifest": {"onnxruntime": "1.32.0", "torch": None},
}
TASKS, SCORES = RESULTS["tasks"], RESULTS["scores"]

TABLE6 = """\
| configuration | rte | stsb | mean |
|---|---:|---:|---:|
| FP32 | 70.40 | 89.09 | 79.75 |
| W8A8 PTQ (per-tensor) | 64.98 | 81.02 | 73.00 |
| PEG K=6, equal + permutation (paper) | 69.31 | 87.92 | 78.62 |"""

TABLE2 = """\
| left in float (W32A8 otherwise) | rte | stsb | mean | Δ mean |
|---|---:|---:|---:|---:|
| none (all activations quantized) | 53.07 | 82.87 | 67.97 | — |
| FFN output | 55.00 | — | — | — |
| residual sum after FFN | 69.00 | 88.00 | 78.50 | +10.53 |"""

TABLE5 = """\
| configuration | K | permutation | groups | rte | stsb | mean |
|---|---:|---|---|---:|---:|---:|
| W8A8 PTQ (per-tensor) | 1 (per-tensor) | — | — | 64.98 | 81.02 | 73.00 |
| PEG K=3, equal, no permutation | 3 | no | equal | 66.06 | 85.96 | 76.01 |
| PEG K=6, equal + permutation (paper) | 6 | per layer | equal | 69.31 | 87.92 | 78.62 |"""

PERF = """\
| model | size MB | × FP32 size | latency ms (b=1, T=128) | × FP32 latency | activation quantizers | 16-bit |
|---|---:|---:|---:|---:|---:|---:|
| FP32 | 90.9 | 1.00 | 20.00 | 1.00 | 0 | 0% |
| W8A8 PTQ (per-tensor) | 23.1 | 0.25 | 12.50 | 0.62 | 190 | 0% |"""


def test_tables_render_from_fixed_results():
    assert render_table(SCORES, TASKS, ["fp32", "w8a8", "peg-k6"]) == TABLE6
    assert render_leave_one_out(SCORES, TASKS, RESULTS["variants"]) == TABLE2
    assert render_peg(SCORES, TASKS, RESULTS["variants"]) == TABLE5
    assert render_perf(RESULTS["perf"]) == PERF


def test_results_page_has_each_section_once_and_loo_rows_only_in_table2():
    page = render_results(RESULTS)
    heads = [line for line in page.splitlines() if line.startswith("## ")]
    assert [h.split(" (")[0].split(":")[0] for h in heads] == [
        "## GLUE dev scores",
        "## Leave-one-out",
        "## Per-embedding-group quantization",
        "## Size and latency",
        "## Run",
    ]
    main_table = page.split("## Leave-one-out")[0]
    assert "| W32A8 | 53.07 | 82.87 | 67.97 |" in main_table and "FFN output" not in main_table
    assert TABLE2 in page and TABLE5 in page
    assert f"- command: `{RESULTS['command']}`" in page and "- torch" not in page  # None values are left out


def test_aliases_expand_and_unknown_rows_are_refused():
    loo = expand_variants(["loo"])
    assert loo[0] == "w32a8" and "loo-ffn.residual_sum" in loo and len(loo) == 1 + len(benchmark.LOO_FAMILIES)
    assert expand_variants(["w8a8", "table5"]) == ["w8a8", "peg-k3-noperm", "peg-k3", "peg-k6-noperm", "peg-k6"]
    with pytest.raises(UsageError, match="unknown bench scheme 'w4a4'"):
        expand_variants(["w4a4"])


@pytest.fixture(scope="module")
def tiny_ranges(tiny_onnx, glue_dir):
    from qonnx_bert.calibration.calibrate import calibrate
    from qonnx_bert.inputs.sequences import glue_train_sequences

    return calibrate(onnx.load(str(tiny_onnx)), glue_train_sequences("rte", glue_dir, 16, 0), progress=False)


def _quantizer_inputs(model: onnx.ModelProto) -> set[str]:
    return {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_leave_one_out_removes_exactly_the_family_quantizers(tiny_onnx, tiny_ranges):
    from qonnx_bert.analysis.leave_one_out import quantize_leave_one_out
    from qonnx_bert.graph.prepare import prepare
    from qonnx_bert.graph.roles import find_roles
    from qonnx_bert.quantize import config_for, quantize

    fp32 = onnx.load(str(tiny_onnx))
    roles = find_roles(prepare(fp32)).roles
    base = _quantizer_inputs(quantize(fp32, config_for("w32a8"), tiny_ranges)[0])
    model, report = quantize_leave_one_out(fp32, tiny_ranges, ["layer.*.ffn.residual_sum"])
    onnx.checker.check_model(model)
    assert base - _quantizer_inputs(model) == {roles["layer.0.ffn.residual_sum"], roles["layer.1.ffn.residual_sum"]}
    assert _quantizer_inputs(model) <= base
    assert sum(report.activation_bits.values()) == len(base) - 2
    # value -> Reshape -> Transpose: the values the data-movement ops carry stay float too; the context path does not
    value, _ = quantize_leave_one_out(fp32, tiny_ranges, ["layer.0.attention.value"])
    removed = base - _quantizer_inputs(value)
    assert roles["layer.0.attention.value"] in removed and len(removed) == 3
    assert roles["layer.0.attention.context"] in _quantizer_inputs(value)
    # the graph output keeps its name when its quantizer is removed
    logits, _ = quantize_leave_one_out(fp32, tiny_ranges, ["output"])
    assert [o.name for o in logits.graph.output] == [o.name for o in fp32.graph.output]
    assert not any(n.op_type == "QuantizeLinear" and n.input[0].startswith("logits") for n in logits.graph.node)


def test_leave_one_out_pattern_must_match(tiny_onnx, tiny_ranges):
    from qonnx_bert.analysis.leave_one_out import quantize_leave_one_out

    with pytest.raises(UsageError, match="matches no role"):
        quantize_leave_one_out(onnx.load(str(tiny_onnx)), tiny_ranges, ["layer.*.ffn.nothing"])


def _bench_dir(tmp_path, tiny_onnx):
    out = tmp_path / "bench"
    (out / "rte" / "models").mkdir(parents=True)
    shutil.copy(tiny_onnx, out / "rte" / "models" / "fp32.onnx")  # the cached export: no re-export in tests
    return out


def _argv(out, tiny_bert_dir, glue_dir, schemes, *extra):
    return [
        "bench",
        "glue",
        "--model",
        str(tiny_bert_dir),
        "--tasks",
        "rte",
        "--schemes",
        schemes,
        "--data-dir",
        str(glue_dir),
        "-o",
        str(out),
        "--limit",
        "8",
        "--latency-runs",
        "0",
        *extra,
    ]


def test_resume_after_a_killed_cell_recomputes_nothing_done(tmp_path, tiny_onnx, tiny_bert_dir, glue_dir, monkeypatch):
    out = _bench_dir(tmp_path, tiny_onnx)
    argv = _argv(out, tiny_bert_dir, glue_dir, "fp32,w8a32,loo-ffn.residual_sum")
    real, calls = benchmark.evaluate, []

    def killed_on_second(model, split, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is killed inside the second cell
        return real(model, split, **kw)

    monkeypatch.setattr(benchmark, "evaluate", killed_on_second)
    assert main(argv) == 130
    cells = out / "rte" / "cells"
    assert sorted(p.name for p in cells.iterdir()) == ["rte.fp32.seed0.json"]  # no half-written file either
    stamp = (cells / "rte.fp32.seed0.json").stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(benchmark, "evaluate", lambda model, split, **kw: calls.append(1) or real(model, split, **kw))
    assert main(argv) == 0
    assert len(calls) == 2  # w8a32 and the leave-one-out row; the finished FP32 cell is read back
    assert (cells / "rte.fp32.seed0.json").stat().st_mtime_ns == stamp
    results = json.loads((out / "results.json").read_text())
    assert results["variants"] == ["fp32", "w8a32", "loo-ffn.residual_sum"]
    assert set(results["scores"]) == set(results["variants"]) and results["manifest"]["onnxruntime"]
    assert "## Leave-one-out" in (out / "results.md").read_text()

    calls.clear()
    assert main(argv) == 0 and calls == []  # a finished run is all cached


def test_results_of_another_build_of_the_model_are_refused(tmp_path, tiny_onnx, tiny_bert_dir, glue_dir, capsys):
    out = _bench_dir(tmp_path, tiny_onnx)
    argv = _argv(out, tiny_bert_dir, glue_dir, "w8a8")
    assert main(argv) == 0
    rebuilt = onnx.load(str(tiny_onnx))  # the same recipe fine-tuned again: other weights, same graph
    weight = next(i for i in rebuilt.graph.initializer if i.dims and len(i.dims) == 2)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1.001), weight.name))
    onnx.save(rebuilt, str(out / "rte" / "models" / "fp32.onnx"))
    cells = sorted((out / "rte" / "cells").iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds results for another build" in err and "pass a new -o directory" in err and "Traceback" not in err
    assert sorted((out / "rte" / "cells").iterdir()) == cells  # nothing written or removed


def test_ray_missing_is_a_usage_error(tmp_path, tiny_onnx, tiny_bert_dir, glue_dir, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(_argv(_bench_dir(tmp_path, tiny_onnx), tiny_bert_dir, glue_dir, "fp32", "--ray")) == 2
    assert "pip install 'qonnx-bert[ray]'" in capsys.readouterr().err


def test_ray_local_instance_runs_the_cells(tmp_path, tiny_onnx, tiny_bert_dir, glue_dir):
    pytest.importorskip("ray")
    out = _bench_dir(tmp_path, tiny_onnx)
    assert main(_argv(out, tiny_bert_dir, glue_dir, "fp32,w8a8", "--ray", "--jobs", "2")) == 0
    assert sorted(p.name for p in (out / "rte" / "cells").iterdir()) == ["rte.fp32.seed0.json", "rte.w8a8.seed0.json"]
    assert (out / "rte" / "models" / "w8a8.onnx").exists()
    import ray

    assert not ray.is_initialized()  # the local instance is shut down again


def test_report_gathers_tables_and_plots(tmp_path):
    from qonnx_bert.benchmarks.report import build_report

    root = tmp_path / "run"
    (root / "plots").mkdir(parents=True)
    (root / "results.json").write_text(json.dumps(RESULTS))
    (root / "plots" / "outliers.png").write_bytes(b"\x89PNG fake")
    (root / "plots" / "outliers.md").write_text("| layer | dim |\n|---|---|\n| 0 | 99 |")
    (root / "debug.md").write_text("worst: layer.0.ffn.residual_sum")
    assert main(["report", str(root), "-o", str(tmp_path / "out" / "report.md")]) == 0
    page = (tmp_path / "out" / "report.md").read_text()
    assert page.startswith("# qonnx report: run\n")
    assert "### Leave-one-out" in page and TABLE2 in page
    assert "## plots/outliers\n\n![plots/outliers](../run/plots/outliers.png)\n\n| layer | dim |" in page
    assert "## debug\n\nworst: layer.0.ffn.residual_sum" in page
    assert build_report(root, root / "report.md") == build_report(root, root / "report.md")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no"):
        build_report(tmp_path / "empty", tmp_path / "r.md")


def test_sigterm_stops_the_worker_processes_and_leaves_no_temp_file(tmp_path, tiny_onnx, tiny_bert_dir, glue_dir):
    """A real SIGTERM to ``qonnx bench --jobs 2`` while its workers are inside cells.

    The child makes every evaluation print its worker's pid and hang: the command must
    still end at once with 143, its workers gone (not left running their cells), no
    temporary file anywhere under the output.
    """
    import os
    import signal
    import subprocess
    import sys
    import time

    out = _bench_dir(tmp_path, tiny_onnx)
    child = (
        "import os, sys, time\n"
        "from qonnx_bert.benchmarks import glue_bench\n"
        "def hang(*a, **k):\n"
        "    print(os.getpid(), flush=True)\n"
        "    time.sleep(120)\n"
        "glue_bench.evaluate = hang\n"
        "from qonnx_bert.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = _argv(out, tiny_bert_dir, glue_dir, "fp32,w8a32,w8a8", "--jobs", "2")
    proc = subprocess.Popen(
        [sys.executable, "-c", child, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        worker = int(proc.stdout.readline())
        assert worker != proc.pid
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # a no-op when it ended; a hanging run must not outlive the test
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "qonnx bench: terminated" and "Traceback" not in err
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)  # the worker was ended, not left to finish its cell
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
