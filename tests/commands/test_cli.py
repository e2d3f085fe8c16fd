"""The `qonnx` CLI end to end on tiny inputs, and its answers to bad input."""

import json
import subprocess
import sys

import onnx
import pytest

from qonnx_bert.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def pipeline(tiny_onnx, tmp_path_factory, glue_dir):
    """calibrate -> quantize through the CLI, once for the module."""
    work = tmp_path_factory.mktemp("cli")
    assert (
        main(
            [
                "calibrate",
                str(tiny_onnx),
                "--task",
                "rte",
                "--data-dir",
                str(glue_dir),
                "-n",
                "16",
                "-o",
                str(work / "ranges.json"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "quantize",
                str(tiny_onnx),
                "--scheme",
                "w8a8",
                "--ranges",
                str(work / "ranges.json"),
                "-o",
                str(work / "q.onnx"),
            ]
        )
        == 0
    )
    return work


def test_calibrate_writes_versioned_ranges_with_settings(pipeline):
    data = json.loads((pipeline / "ranges.json").read_text())
    assert data["format"] == "qonnx.ranges" and data["version"] == 1
    cal = data["calibration"]
    assert cal["num_sequences"] == 16 and cal["seed"] == 0 and cal["estimator"] == "current_minmax"
    assert cal["source"] == "glue:rte:train" and cal["padding"] == "excluded"
    roles = {e["role"] for e in data["tensors"].values()}
    assert {"layer.1.ffn.residual_sum", "layer.0.attention.softmax_output", "output"} <= roles


def test_quantize_and_eval(pipeline, glue_dir, capsys):
    model = onnx.load(str(pipeline / "q.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    code, out, _ = run(capsys, "eval", str(pipeline / "q.onnx"), "--task", "rte", "--data-dir", str(glue_dir))
    assert code == 0 and "rte dev (24 examples, ONNX Runtime CPU): accuracy=" in out


def test_quantize_peg_flags_reach_the_scheme(pipeline, tiny_onnx, capsys):
    out = pipeline / "peg.onnx"
    argv = [
        "quantize",
        str(tiny_onnx),
        "--scheme",
        "peg",
        "--groups",
        "3",
        "--grouping",
        "equal",
        "--permutation",
        "model",
        "--layers",
        "0-1",
        "--ranges",
        str(pipeline / "ranges.json"),
        "-o",
        str(out),
    ]
    code, _, err = run(capsys, *argv)
    assert code == 0 and "PEG K=3 (equal groups, one model-wide permutation folded into the weights)" in err
    assert sum(n.op_type == "Split" for n in onnx.load(str(out)).graph.node) == 2


def test_export_command(tiny_bert_dir, tmp_path, capsys):
    code, _, err = run(capsys, "export", str(tiny_bert_dir), "-o", str(tmp_path / "m.onnx"), "--static-shape", "1,16")
    assert code == 0 and "max |logit difference| vs PyTorch" in err
    assert [d.dim_value for d in onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.shape.dim] == [
        1,
        16,
    ]


def test_estimators_lists_builtins(capsys):
    code, out, _ = run(capsys, "estimators")
    assert code == 0
    for name in ("current_minmax", "running_minmax", "percentile", "mse"):
        assert name in out


def _non_bert(tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    path = tmp_path / "relu.onnx"
    onnx.save(
        onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])),
        str(path),
    )
    return path


@pytest.mark.parametrize(
    "argv, message",
    [
        (["quantize", "{tmp}/missing.onnx", "-o", "{tmp}/o.onnx"], "not found"),
        (["quantize", "{tmp}/garbage.onnx", "-o", "{tmp}/o.onnx"], "not a readable ONNX model"),
        (["quantize", "{relu}", "-o", "{tmp}/o.onnx", "--scheme", "w8a32"], "not a BERT-like encoder"),
        (["eval", "{tiny}", "--task", "nope", "--data-dir", "{glue}"], "unknown GLUE task 'nope'"),
        (["eval", "{tiny}", "--task", "rte", "--data-dir", "{tmp}"], "RTE/dev.tsv not found"),
        (["quantize", "{tiny}", "-o", "{tmp}/o.onnx", "--ranges", "{tmp}/other.json"], "another model"),
        (["quantize", "{tiny}", "-o", "{tiny}", "--scheme", "w8a32"], "is the input file"),
        (["calibrate", "{tiny}", "-o", "{tmp}/r.json", "--estimator", "bogus"], "unknown estimator 'bogus'"),
        (
            ["quantize", "{tiny}", "-o", "{tmp}/o.onnx", "--scheme", "w8a8", "--groups", "3"],
            "--groups is not a setting of w8a8",
        ),
        (["quantize", "{tiny}", "-o", "{tmp}/o.onnx", "--scheme", "peg", "--layers", "x"], "is not a layer list"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    argv, message, tiny_onnx, glue_dir, pipeline, tmp_path, capsys
):
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    ranges = json.loads((pipeline / "ranges.json").read_text())
    ranges["model"]["fingerprint"] = "0" * 16
    (tmp_path / "other.json").write_text(json.dumps(ranges))
    before = tiny_onnx.read_bytes()
    subs = {"tmp": tmp_path, "tiny": tiny_onnx, "glue": glue_dir, "relu": _non_bert(tmp_path)}
    code, _, err = run(capsys, *[a.format(**subs) for a in argv])
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o.onnx").exists() and not (tmp_path / "r.json").exists()
    assert tiny_onnx.read_bytes() == before  # the input is never overwritten
    assert not list(tmp_path.glob(".*.tmp"))


def test_console_script_exit_code_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "qonnx_bert", "quantize", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o.onnx")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "not found" in proc.stderr
