"""The path guard and atomic outputs of ``qonnx_bert.core.files``: real files, faults injected where needed."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from qonnx_bert.core.argtypes import int_in, positive_float, positive_int
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.files import atomic_outputs, external_data_files, guard, output_folder, require


def _model_with_external_data(folder: Path, location: str = "model.onnx.data") -> Path:
    """A one-Add model whose 64 KB weight lives in an external-data file beside it."""
    weight = numpy_helper.from_array(np.ones((128, 128), np.float32), "w")
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [128, 128])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [128, 128])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [weight])
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph), str(path), save_as_external_data=True, location=location, size_threshold=0)
    return path


def test_output_equal_to_an_input_is_refused_through_dots_symlinks_and_hardlinks(tmp_path):
    src = tmp_path / "in.json"
    src.write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.json").symlink_to(src)
    os.link(src, tmp_path / "hard.json")
    for same in (src, tmp_path / "sub" / ".." / "in.json", tmp_path / "link.json", tmp_path / "hard.json"):
        with pytest.raises(UsageError, match="is the input file"):
            guard([src], [same])
    guard([src], [tmp_path / "other.json"])  # a different file passes


def test_outputs_that_coincide_are_refused(tmp_path):
    with pytest.raises(UsageError, match="are the same file"):
        guard([], [tmp_path / "a.json", tmp_path / "sub" / ".." / "a.json"])


def test_external_data_file_and_checkpoint_files_count_as_inputs(tmp_path):
    model = _model_with_external_data(tmp_path)
    assert external_data_files(model) == [(tmp_path / "model.onnx.data").resolve()]
    with pytest.raises(UsageError, match="read from"):
        guard([model], [tmp_path / "model.onnx.data"])
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(UsageError, match="read from"):
        guard([ckpt], [ckpt / "model.safetensors"])
    with pytest.raises(UsageError, match="is the input file"):
        guard([ckpt], [], output_dirs=[ckpt])


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    (tmp_path / "inner").mkdir()
    model = _model_with_external_data(tmp_path / "inner")
    proto = onnx.load(str(model), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../secret.bin"
    onnx.save(proto, str(model))
    with pytest.raises(UsageError, match="outside its folder"):
        guard([model], [tmp_path / "out.onnx"])


@pytest.mark.parametrize(
    "make, directory, message",
    [
        (lambda p: p.mkdir(), False, "is an existing directory"),
        (lambda p: p.write_text("x"), True, "is an existing file"),
    ],
)
def test_file_and_folder_kinds_are_checked(tmp_path, make, directory, message):
    make(tmp_path / "out")
    with pytest.raises(UsageError, match=message):
        guard([], [] if directory else [tmp_path / "out"], output_dirs=[tmp_path / "out"] if directory else [])


def test_unwritable_locations_are_one_line_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        guard([], [tmp_path / "file" / "out.json"])
    if os.access("/proc/sys", os.W_OK):
        pytest.skip("/proc/sys is writable here: no read-only location to try")
    with pytest.raises(UsageError, match="not writable"):
        guard([], [Path("/proc/sys/qonnx-missing/out.json")])


def test_atomic_outputs_renames_together_with_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        with atomic_outputs(tmp_path / "new" / "a.json", tmp_path / "b.json") as (a, b):
            assert not (tmp_path / "b.json").exists()  # nothing appears before the block ends
            a.write_text("A")
            b.write_text("B")
    finally:
        os.umask(old)
    assert (tmp_path / "new" / "a.json").read_text() == "A" and (tmp_path / "b.json").read_text() == "B"
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o664  # mkstemp alone would give 0600
    assert not list(tmp_path.rglob(".*.tmp"))


def test_a_failure_leaves_no_temp_file_no_new_folder_and_old_outputs_intact(tmp_path):
    (tmp_path / "b.json").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_outputs(tmp_path / "x" / "y" / "a.json", tmp_path / "b.json") as (_, b):
            b.write_text("half")
            raise RuntimeError("work failed")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["b.json"]
    assert (tmp_path / "b.json").read_text() == "old"


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_rename_puts_back_the_outputs_already_renamed(tmp_path, monkeypatch, failure):
    """The renames are all or none: the third fails, so the first is restored and the second (new) removed."""
    (tmp_path / "a.json").write_text("old a")
    (tmp_path / "c.json").write_text("old c")
    replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(Path(dst).name)
        if Path(dst).name == "c.json" and str(src).endswith(".tmp"):
            raise failure
        replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(type(failure)):
        with atomic_outputs(tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json") as temps:
            for tmp in temps:
                tmp.write_text("new")
    assert calls[:3] == ["a.json", "b.json", "c.json"]  # a and b were renamed before c failed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "c.json"]  # no b, no backup, no temp
    assert (tmp_path / "a.json").read_text() == "old a" and (tmp_path / "c.json").read_text() == "old c"


def test_output_folder_removes_the_empty_folders_it_made(tmp_path):
    (tmp_path / "out" / "kept").mkdir(parents=True)
    with pytest.raises(KeyboardInterrupt):
        with output_folder(tmp_path / "out" / "new" / "deep") as folder:
            (folder / "models").mkdir()
            raise KeyboardInterrupt
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["kept"]  # the user's empty folder stays
    with output_folder(tmp_path / "res") as folder:
        (folder / "r.json").write_text("{}")
    assert (tmp_path / "res" / "r.json").is_file()


@pytest.mark.parametrize(
    "doc, kind, message",
    [
        ({}, float, "missing key 'min' (a number expected)"),
        ({"min": "0"}, (int, float), "key 'min' must be an integer or a number, got \"0\""),
        ({"min": True}, (int, float), "must be an integer or a number, got true"),
        ({"min": [1]}, dict, "must be an object, got [1]"),
    ],
)
def test_require_names_file_key_and_type(doc, kind, message):
    with pytest.raises(UsageError) as err:
        require(doc, "min", kind, "r.json: tensor 't'")
    assert str(err.value).startswith("r.json: tensor 't'") and message in str(err.value)


@pytest.mark.parametrize(
    "parse, text, ok",
    [
        (positive_int, "3", 3),
        (positive_int, "0", None),
        (positive_int, "-1", None),
        (positive_int, "1.5", None),
        (int_in(0, 9), "9", 9),
        (int_in(0, 9), "10", None),
        (positive_float, "0.5", 0.5),
        (positive_float, "nan", None),
        (positive_float, "inf", None),
        (positive_float, "0", None),
    ],
)
def test_argument_types(parse, text, ok):
    if ok is None:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
    else:
        assert parse(text) == ok


def test_library_settings_are_worded_as_the_commands_flags():
    from qonnx_bert.core.errors import as_flags

    message = "pass `data_dir` or set X; `limit=0`: must be at least 1; run `qonnx calibrate`; `colour` stays"
    worded = as_flags(message, {"data_dir", "limit"})
    assert worded == "pass --data-dir or set X; --limit 0: must be at least 1; run `qonnx calibrate`; `colour` stays"
