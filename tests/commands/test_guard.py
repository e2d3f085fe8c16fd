"""Every case of issue 18, as one table: one line on stderr, exit 2, and nothing written or changed.

Plus what a table cannot hold: SIGTERM in the middle of writing (a real signal to a real
``python -m qonnx_bert`` process), outputs that appear together, and the messages that
used to mislead.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from qonnx_bert.cli import main


@pytest.fixture(scope="module")
def work(tiny_onnx, tiny_ranges, tiny_bert_dir, glue_dir, tmp_path_factory) -> Path:
    """A folder of inputs to misuse: a model (also with external data), ranges, texts, a recipe, a checkpoint."""
    w = tmp_path_factory.mktemp("guard")
    shutil.copy(tiny_onnx, w / "victim.onnx")
    shutil.copy(tiny_ranges, w / "r.json")
    onnx.save(onnx.load(str(tiny_onnx)), str(w / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data")
    (w / "t.txt").write_text("a sentence\nanother one\n")
    (w / "t.md").write_text("texts kept as Markdown\n")
    (w / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (w / "rec.json").write_text(json.dumps({"format": "qonnx.recipe", "version": 1, "default": "current_minmax"}))
    shutil.copytree(tiny_bert_dir, w / "ckpt")
    (w / "adir").mkdir()
    (w / "afile").write_text("not a folder")
    results = w / "results"
    results.mkdir()
    (results / "results.md").write_text("# a bench table\n")
    (results / "results.json").write_text(json.dumps({"note": "no tables"}))
    ranges = json.loads(tiny_ranges.read_text())
    tensor = next(iter(ranges["tensors"]))
    for name, change in {
        "nokeys": lambda d: d.pop("tensors"),
        "string": lambda d: d["tensors"][tensor].update(min="0"),
        "nan": lambda d: d["tensors"][tensor].update(min=float("nan")),
        "inf": lambda d: d["tensors"][tensor].update(max=float("inf")),
        "inverted": lambda d: d["tensors"][tensor].update(min=5.0, max=-5.0),
        "huge": lambda d: d["tensors"][tensor].update(min=-1e308, max=1e308),
    }.items():
        doc = json.loads(json.dumps(ranges))
        change(doc)
        (w / f"r_{name}.json").write_text(json.dumps(doc))
    (w / "r_dir.json").mkdir()
    hf = {"empty": "{}", "gpt2": json.dumps({"model_type": "gpt2"})}
    for name, config in hf.items():
        (w / f"hf_{name}").mkdir()
        (w / f"hf_{name}" / "config.json").write_text(config)
    shutil.copytree(tiny_bert_dir, w / "hf_noweights", ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    shutil.copytree(tiny_bert_dir, w / "hf_corrupt")
    (w / "hf_corrupt" / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    for name, content in {
        "glue_empty": b"",
        "glue_latin1": "index\tsentence1\tsentence2\tlabel\n0\tcaf\xe9\tb\tentailment\n".encode("latin-1"),
    }.items():
        (w / name / "RTE").mkdir(parents=True)
        (w / name / "RTE" / "dev.tsv").write_bytes(content)
    ranges["model"]["fingerprint"] = "0" * 16
    (w / "r_other.json").write_text(json.dumps(ranges))
    qdq = w / "qdq.onnx"
    assert main(["quantize", str(w / "victim.onnx"), "--ranges", str(w / "r.json"), "-o", str(qdq)]) == 0
    empty = onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], []))
    onnx.save(empty, str(w / "empty.onnx"))
    return w


M, R = "{w}/victim.onnx", "{w}/r.json"
QUANT = ["quantize", M, "--ranges", R]
CASES = {
    # 1. inputs destroyed
    "calibrate --ort-cache = model": (["calibrate", M, "-o", "{w}/o.json", "--ort-cache", M], "is the input file"),
    "quantize --save-selection = model": (
        [*QUANT, "--scheme", "mp", "--save-selection", M, "-o", "{w}/o.onnx"],
        "is the input file",
    ),
    "quantize -o = --ranges": ([*QUANT, "-o", R], "is the input file"),
    "quantize -o = --int16-from": ([*QUANT, "--int16-from", "{w}/t.txt", "-o", "{w}/t.txt"], "is the input file"),
    "calibrate -o = --texts": (["calibrate", M, "--texts", "{w}/t.txt", "-o", "{w}/t.txt"], "is the input file"),
    "calibrate -o = --recipe": (["calibrate", M, "--recipe", "{w}/rec.json", "-o", "{w}/rec.json"], "is the input"),
    "quantize --save-selection = --ranges": ([*QUANT, "--save-selection", R, "-o", "{w}/o.onnx"], "is the input"),
    "quantize --save-selection = -o": (
        [*QUANT, "--save-selection", "{w}/o.onnx", "-o", "{w}/o.onnx"],
        "are the same file",
    ),
    "quantize -o = external data": (
        ["quantize", "{w}/ext.onnx", "--scheme", "w8a32", "-o", "{w}/ext.onnx.data"],
        "read from",
    ),
    "export -o = checkpoint weights": (["export", "{w}/ckpt", "-o", "{w}/ckpt/model.safetensors"], "read from"),
    "report -o = results.json": (["report", "{w}/results", "-o", "{w}/results/results.json"], "is the input file"),
    "outliers .md beside -o = --texts": (
        ["outliers", M, "--texts", "{w}/t.md", "-o", "{w}/t.png"],
        "is the input file",
    ),
    "debug --plot .md = --texts": (
        ["debug", M, "{w}/qdq.onnx", "--texts", "{w}/t.md", "--plot", "{w}/t.png"],
        "is the input file",
    ),
    # found by the second sweep: the GLUE files and tokenizer a command reads are inputs too
    "calibrate -o = the GLUE training TSV": (
        ["calibrate", M, "--task", "rte", "--data-dir", "{glue}", "-n", "2", "-o", "{glue}/RTE/train.tsv"],
        "is the input file",
    ),
    "debug --plot = the GLUE dev TSV": (
        ["debug", M, "{w}/qdq.onnx", "--task", "rte", "--data-dir", "{glue}", "--plot", "{glue}/RTE/dev.tsv"],
        "is the input file",
    ),
    "outliers -o = the GLUE dev TSV": (
        ["outliers", M, "--task", "rte", "--data-dir", "{glue}", "-o", "{glue}/RTE/dev.tsv"],
        "is the input file",
    ),
    "calibrate -o = a tokenizer file": (
        ["calibrate", M, "--tokenizer", "{w}/ckpt", "-o", "{w}/ckpt/tokenizer.json"],
        "read from",
    ),
    "quantize -o = a tokenizer file": (
        [*QUANT, "--tokenizer", "{w}/ckpt", "-o", "{w}/ckpt/tokenizer.json"],
        "read from",
    ),
    # 2. wrong results with exit 0
    "--texts not UTF-8": (["calibrate", M, "--texts", "{w}/latin1.txt", "-o", "{w}/o.json"], "is not UTF-8"),
    "--layers 1- (an open span)": ([*QUANT, "--scheme", "peg", "--layers", "1-", "-o", "{w}/o.onnx"], "layer list"),
    "--layers 0,0": ([*QUANT, "--scheme", "peg", "--layers", "0,0", "-o", "{w}/o.onnx"], "more than once"),
    "--adaround on 8-bit weights": ([*QUANT, "--adaround", "5", "-o", "{w}/o.onnx"], "<= 4-bit weights only"),
    "--block-size without blocks": ([*QUANT, "--block-size", "16", "-o", "{w}/o.onnx"], "--block-size sets"),
    "--save-selection of a scheme that selects nothing": (
        [*QUANT, "--save-selection", "{w}/s.json", "-o", "{w}/o.onnx"],
        "chose no 16-bit roles",
    ),
    "--estimator 'mse:'": (["calibrate", M, "--estimator", "mse:", "-o", "{w}/o.json"], "nothing after ':'"),
    "ranges beyond float32": ([*QUANT[:2], "--ranges", "{w}/r_huge.json", "-o", "{w}/o.onnx"], "beyond float32"),
    "debug of two FP32 models": (["debug", M, M], "holds no quantized node"),
    "eval --batch-size -1": (["eval", M, "--task", "rte", "--data-dir", "{glue}", "--batch-size", "-1"], "at least 1"),
    "ranges min > max": ([*QUANT[:2], "--ranges", "{w}/r_inverted.json", "-o", "{w}/o.onnx"], "> max"),
    "ranges +inf": ([*QUANT[:2], "--ranges", "{w}/r_inf.json", "-o", "{w}/o.onnx"], "non-finite range"),
    "bench --limit 0": (["bench", "glue", "--limit", "0", "-o", "{w}/bench"], "at least 1"),
    "check --soc 99999": (["check", "{w}/qdq.onnx", "--soc", "99999"], "unknown SoC '99999'"),
    "compile --soc 99999": (["compile", "{w}/qdq.onnx", "--soc", "99999", "-o", "{w}/ctx"], "unknown SoC"),
    "export --max-length 0": (["export", "{w}/ckpt", "-o", "{w}/o.onnx", "--max-length", "0"], "at least 1"),
    "export --max-length -5": (["export", "{w}/ckpt", "-o", "{w}/o.onnx", "--max-length", "-5"], "at least 1"),
    "export --max-length 100000": (
        ["export", "{w}/ckpt", "-o", "{w}/o.onnx", "--max-length", "100000"],
        "takes 1 to 512 tokens",
    ),
    # 3. tracebacks
    "-o an existing directory": ([*QUANT, "-o", "{w}/adir"], "is an existing directory"),
    "-o under a file": ([*QUANT, "-o", "{w}/afile/o.onnx"], "is a file, not a folder"),
    "compile -o an existing file": (["compile", "{w}/qdq.onnx", "-o", "{w}/afile"], "is an existing file"),
    "bench -o a file": (["bench", "glue", "--data-dir", "{glue}", "-o", "{w}/afile"], "is an existing file"),
    "ranges missing keys": ([*QUANT[:2], "--ranges", "{w}/r_nokeys.json", "-o", "{w}/o.onnx"], "missing key 'tensors'"),
    "ranges string number": ([*QUANT[:2], "--ranges", "{w}/r_string.json", "-o", "{w}/o.onnx"], "key 'min' must be"),
    "ranges NaN": ([*QUANT[:2], "--ranges", "{w}/r_nan.json", "-o", "{w}/o.onnx"], "non-finite range"),
    "ranges a directory": ([*QUANT[:2], "--ranges", "{w}/r_dir.json", "-o", "{w}/o.onnx"], "is a directory"),
    "empty GLUE TSV": (["eval", M, "--task", "rte", "--data-dir", "{w}/glue_empty"], "is empty"),
    "non-UTF-8 GLUE TSV": (["eval", M, "--task", "rte", "--data-dir", "{w}/glue_latin1"], "is not UTF-8"),
    "HF empty config": (["export", "{w}/hf_empty", "-o", "{w}/o.onnx"], "key 'model_type' must be one of"),
    "HF non-BERT config": (["export", "{w}/hf_gpt2", "-o", "{w}/o.onnx"], 'got "gpt2"'),
    "HF no weights": (["export", "{w}/hf_noweights", "-o", "{w}/o.onnx"], "cannot load the weights"),
    "HF corrupt safetensors": (["export", "{w}/hf_corrupt", "-o", "{w}/o.onnx"], "cannot load the weights"),
    "eval --batch-size 0": (["eval", M, "--task", "rte", "--data-dir", "{glue}", "--batch-size", "0"], "at least 1"),
    "calibrate --ort-cache a directory": (["calibrate", M, "-o", "{w}/o.json", "--ort-cache", "{w}/adir"], "directory"),
    # 4. leftovers: a failure under a new folder leaves no folder
    "-o newdir/x.onnx on failure": (
        [*QUANT[:2], "--ranges", "{w}/r_nan.json", "-o", "{w}/newdir/x.onnx"],
        "non-finite",
    ),
    # 5. messages that misled
    "ranges of another model named by path": (
        [*QUANT[:2], "--ranges", "{w}/r_other.json", "-o", "{w}/o.onnx"],
        "r_other.json was calibrated on another model",
    ),
    "already quantized model": (
        ["quantize", "{w}/qdq.onnx", "--ranges", R, "-o", "{w}/o.onnx"],
        "is already quantized",
    ),
    "empty model": (["quantize", "{w}/empty.onnx", "--scheme", "w8a32", "-o", "{w}/o.onnx"], "is an empty graph"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_issue_18_case_is_one_line_exit_2_and_nothing_changes(case, work, glue_dir, tiny_onnx, snapshot, capsys):
    argv, message = CASES[case]
    before = snapshot(work, tiny_onnx, glue_dir)
    code = main([a.format(w=work, glue=glue_dir) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err
    assert snapshot(work, tiny_onnx, glue_dir) == before  # nothing written, nothing changed, no temp, no folder


def test_sigterm_while_writing_leaves_no_temp_file_and_no_folder(work, tmp_path):
    """A real SIGTERM, sent by the test while the output's temporary file is half-written.

    The child wraps ``onnx.save`` to write a few bytes, say so and wait: the test then
    knows the temporary file exists and signals the process from outside.
    """
    out = tmp_path / "new" / "deeper" / "q.onnx"
    child = (
        "import sys, time, onnx\n"
        "save = onnx.save\n"
        "def slow_save(model, path, *a, **k):\n"
        "    if not str(path).endswith('.tmp') or '.q.onnx.' not in str(path):\n"
        "        return save(model, path, *a, **k)  # the quantizer's own scratch files\n"
        "    open(path, 'wb').write(b'half')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        "onnx.save = slow_save\n"
        "from qonnx_bert.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["quantize", str(work / "victim.onnx"), "--ranges", str(work / "r.json"), "-o", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-c", child, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    assert list((tmp_path / "new" / "deeper").glob(".q.onnx.*.tmp"))  # the temp file exists now
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "qonnx quantize: terminated"
    assert list(tmp_path.iterdir()) == []  # no temp file, and the two folders it made are gone


def test_calibrate_writes_ranges_and_ort_cache_together(work, tmp_path):
    out, cache = tmp_path / "r.json", tmp_path / "cache.json"
    assert main(["calibrate", str(work / "victim.onnx"), "-n", "2", "-o", str(out), "--ort-cache", str(cache)]) == 0
    ort = json.loads(cache.read_text())
    ours = json.loads(out.read_text())["tensors"]
    assert set(ort["data"]) == set(ours)  # ONNX Runtime's cache holds the same tensors
    assert out.stat().st_mode & 0o077 == cache.stat().st_mode & 0o077  # both with the umask, not 0600 for one


def test_degenerate_range_is_widened_with_a_warning(work, tmp_path, caplog):
    from qonnx_bert.calibration.ranges import MIN_RANGE, RangeTable

    doc = json.loads((work / "r.json").read_text())
    tensor = next(iter(doc["tensors"]))
    doc["tensors"][tensor].update(min=2.0, max=2.0)
    (tmp_path / "flat.json").write_text(json.dumps(doc))
    table = RangeTable.load(tmp_path / "flat.json")
    assert table.range(tensor) == pytest.approx((2.0 - MIN_RANGE / 2, 2.0 + MIN_RANGE / 2), abs=1e-9)
    assert "min == max" in caplog.text and str(tmp_path / "flat.json") in caplog.text


def test_same_command_same_bytes(work, tmp_path):
    """Determinism: calibrate and quantize twice, byte-identical outputs."""
    model, ranges = str(work / "victim.onnx"), [tmp_path / "r1.json", tmp_path / "r2.json"]
    for out in ranges:
        assert main(["calibrate", model, "-n", "3", "--seed", "7", "-o", str(out)]) == 0
    assert ranges[0].read_bytes() == ranges[1].read_bytes()
    models = [tmp_path / "q1.onnx", tmp_path / "q2.onnx"]
    for out in models:
        assert main(["quantize", model, "--scheme", "mp", "--ranges", str(ranges[0]), "-o", str(out)]) == 0
    assert models[0].read_bytes() == models[1].read_bytes()


def test_debug_compares_a_dynamic_fp32_model_with_its_static_quantized_twin(work, tmp_path, capsys):
    """The static model fixes the shape: both run on sequences padded to it, padding left out of the sums."""
    static, ranges, qdq = tmp_path / "static.onnx", tmp_path / "r.json", tmp_path / "qdq.onnx"
    assert main(["export", str(work / "ckpt"), "--static-shape", "1,16", "-o", str(static)]) == 0
    assert main(["calibrate", str(static), "-n", "4", "-o", str(ranges)]) == 0
    assert main(["quantize", str(static), "--ranges", str(ranges), "-o", str(qdq)]) == 0
    capsys.readouterr()
    assert main(["debug", str(work / "victim.onnx"), str(qdq), "-n", "3"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if "| 8-bit |" in line]
    assert len(rows) > 10 and all(float(r[3]) > 10 for r in rows)  # matched by name, on a few-dB-or-better grid


def test_a_memory_bound_beyond_any_model_packs_all_tensors_in_one_pass():
    from qonnx_bert.calibration.memory import pack

    assert pack(["a", "b", "c"], {"a": 4, "b": 4, "c": 4}, 1e300) == [["a", "b", "c"]]
    assert pack(["a", "b", "c"], {"a": 4, "b": 4, "c": 4}, 1e300, max_count=2) == [["a", "b"], ["c"]]
