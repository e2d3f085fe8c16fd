"""Property-based tests (hypothesis) of the CLI and the file readers.

Whatever number a user types and however a ranges, selection or recipe file is
damaged, qonnx answers exit 0 with a valid output or exit 2 with one line on
stderr, never a traceback, and never changes an input file. In-process runs
(``cli.main``) raise any unexpected exception into the test, so "no traceback" is
checked by the run itself; two subprocess runs check it for the real console entry.
Few examples each (the CLI runs ONNX Runtime): about a minute in all on 2 cores.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qonnx_bert.calibration.ranges import RangeTable
from qonnx_bert.calibration.recipes import load_recipe
from qonnx_bert.cli import main
from qonnx_bert.core.errors import UsageError

RECIPES = Path(__file__).parents[2] / "calibration"
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])

# What a user might type for a number: small and edge integers, floats, words, huge values.
NUMBER_TEXT = st.one_of(
    st.integers(-3, 6).map(str),
    st.sampled_from(["0", "-0", "1.5", "1e3", "nan", "inf", "-inf", "", "x", "0x10", str(2**40), "4294967295"]),
)
# What a damaged JSON file might hold where a value was.
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(-2, 2), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def inputs(tiny_onnx, tiny_ranges, tmp_path_factory) -> Path:
    """Copies of the inputs the properties run on (the session fixtures stay pristine)."""
    w = tmp_path_factory.mktemp("props")
    shutil.copy(tiny_onnx, w / "m.onnx")
    shutil.copy(tiny_ranges, w / "r.json")
    (w / "t.txt").write_text("one sentence\nand a second, longer sentence\n")
    return w


def _run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()  # drop what the previous example's checks logged
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def _assert_refused_or_done(code: int, err: str, output: Path, valid) -> None:
    assert code in (0, 2), err
    if code == 2:
        assert len(err.splitlines()) == 1 and "error:" in err, err
        assert not output.exists()
    else:
        valid(output)
        output.unlink()


def _ranges_valid(path: Path) -> None:
    table = RangeTable.load(path)
    assert all(math.isfinite(e["min"]) and e["min"] <= e["max"] for e in table.tensors.values())


@settings(max_examples=12, **SETTINGS)
@given(n=NUMBER_TEXT, batch=NUMBER_TEXT, seed=NUMBER_TEXT, memory=NUMBER_TEXT)
@example(n="2", batch="1", seed="4294967295", memory="0.5")  # the success path is always taken once
def test_calibrate_numbers(inputs, snapshot, capsys, n, batch, seed, memory):
    before = snapshot(inputs)
    out = inputs / "out" / "ranges.json"
    argv = ["calibrate", str(inputs / "m.onnx"), "--texts", str(inputs / "t.txt"), "-o", str(out)]
    argv += [f"-n={n}", f"--batch-size={batch}", f"--seed={seed}", f"--max-memory={memory}"]
    code, err = _run(argv, capsys)
    _assert_refused_or_done(code, err, out, _ranges_valid)
    if code == 2:
        assert not out.parent.exists()  # the output's folder is made only when the work is done
    shutil.rmtree(out.parent, ignore_errors=True)
    assert snapshot(inputs) == before


@settings(max_examples=12, **SETTINGS)
@given(limit=NUMBER_TEXT, batch=NUMBER_TEXT)
@example(limit="3", batch="2")
def test_eval_numbers(inputs, glue_dir, snapshot, capsys, limit, batch):
    before = snapshot(inputs, glue_dir)
    capsys.readouterr()
    argv = ["eval", str(inputs / "m.onnx"), "--task", "rte", "--data-dir", str(glue_dir)]
    code = main([*argv, f"--limit={limit}", f"--batch-size={batch}"])
    out = capsys.readouterr()
    assert code in (0, 2), out.err
    if code == 0:
        assert "rte dev (" in out.out and "accuracy=" in out.out
    else:
        assert len(out.err.strip().splitlines()) == 1
    assert snapshot(inputs, glue_dir) == before


def _json_paths(doc, prefix=()) -> list[tuple]:
    """Every key path of a JSON document, lists entered at their first element only (keeps the list short)."""
    found = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc[:1]) if isinstance(doc, list) else []
    for key, value in items:
        found.append((*prefix, key))
        found += _json_paths(value, (*prefix, key))
    return found


def _damage(doc, path: tuple, junk, delete: bool):
    """A copy of ``doc`` with the value at ``path`` replaced by ``junk`` (or its key deleted)."""
    doc = json.loads(json.dumps(doc))
    holder = doc
    for key in path[:-1]:
        holder = holder[key]
    if delete and isinstance(holder, dict):
        del holder[path[-1]]
    else:
        holder[path[-1]] = junk
    return doc


def damaged_files(doc: dict):
    """A strategy of damaged versions of ``doc``, as file bytes: a value replaced or deleted, or the text cut short."""
    paths = _json_paths(doc)
    text = json.dumps(doc).encode()
    replaced = st.builds(
        lambda i, junk, delete: json.dumps(_damage(doc, paths[i], junk, delete)).encode(),
        st.integers(0, len(paths) - 1),
        JUNK,
        st.booleans(),
    )
    cut = st.integers(0, len(text) - 1).map(lambda i: text[:i])
    return st.one_of(replaced, replaced, cut, st.binary(max_size=8))


def _ranges_doc(tiny_ranges: Path) -> dict:
    """The tiny model's ranges, its many tensors cut to three so every key is a likely target."""
    doc = json.loads(tiny_ranges.read_text())
    doc["tensors"] = dict(list(doc["tensors"].items())[:3])
    doc["per_channel"] = dict(list(doc["per_channel"].items())[:1])
    return doc


def test_damaged_ranges_through_quantize(inputs, tiny_ranges, snapshot, capsys):
    full = json.loads(tiny_ranges.read_text())

    @settings(max_examples=15, **SETTINGS)
    @given(data=damaged_files(_ranges_doc(tiny_ranges)))
    def check(data):
        doc = None
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            pass
        if isinstance(doc, dict) and isinstance(doc.get("tensors"), dict):  # keep the tensors the scheme needs
            doc["tensors"] = {**full["tensors"], **doc["tensors"]}
            data = json.dumps(doc).encode()
        (inputs / "bad.json").write_bytes(data)
        before = snapshot(inputs)
        out = inputs / "q.onnx"
        argv = ["quantize", str(inputs / "m.onnx"), "--ranges", str(inputs / "bad.json"), "-o", str(out)]
        code, err = _run(argv, capsys)
        _assert_refused_or_done(code, err, out, lambda p: onnx.checker.check_model(str(p)))
        assert snapshot(inputs) == before

    check()


def _reader_holds(doc: dict, read, valid, folder: Path, examples: int = 40) -> None:
    """``read`` of any damaged ``doc`` returns something ``valid`` or raises a one-line ``UsageError``."""

    @settings(max_examples=examples, **SETTINGS)
    @given(raw=damaged_files(doc))
    def check(raw):
        (folder / "bad.json").write_bytes(raw)
        try:
            result = read(folder / "bad.json")
        except UsageError as err:
            assert "\n" not in str(err).strip()
            return
        assert valid(result)

    check()


def test_range_table_reader(tiny_ranges, tmp_path):
    def valid(table):
        return all(
            math.isfinite(e["min"]) and math.isfinite(e["max"]) and e["min"] < e["max"] for e in table.tensors.values()
        )

    _reader_holds(_ranges_doc(tiny_ranges), RangeTable.load, valid, tmp_path, examples=60)


def test_selection_reader(tiny_onnx, tmp_path):
    from qonnx_bert.calibration.ranges import model_fingerprint
    from qonnx_bert.quantize.schemes.mixed import load_selection, model_record, save_selection

    model = onnx.load(str(tiny_onnx))
    selection = {"roles": ["output", "layer.0.ffn.output"], "sensitivity": {"output": 1.5}}
    save_selection(tmp_path / "sel.json", model_record(model), "mp", selection)
    doc = json.loads((tmp_path / "sel.json").read_text())
    roles_ok = lambda roles: isinstance(roles, list) and all(isinstance(r, str) for r in roles)  # noqa: E731
    _reader_holds(doc, lambda path: load_selection(path, model_fingerprint(model)), roles_ok, tmp_path)


def test_recipe_reader(tmp_path):
    doc = json.loads((RECIPES / "percentile-residual.json").read_text())
    _reader_holds(doc, load_recipe, lambda recipe: recipe is not None, tmp_path)


@pytest.mark.parametrize(
    "argv", [["eval", "{m}", "--task", "rte", "--batch-size", "-1"], ["check", "{m}", "--soc", "99999"]]
)
def test_console_entry_refuses_bad_numbers_in_one_line(inputs, argv):
    args = [a.format(m=inputs / "m.onnx") for a in argv]
    proc = subprocess.run([sys.executable, "-m", "qonnx_bert", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
