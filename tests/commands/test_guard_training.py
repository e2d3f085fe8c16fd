"""Issue 18 for ``qonnx qat`` and ``qonnx models build``: one line, exit 2, no input changed, nothing left.

The training commands read a checkpoint folder, ranges, GLUE TSVs and a recipe, and write a
folder (QAT) or replace one (a built checkpoint); each case below once destroyed an input,
ran on a bad number, or ended in a traceback. Then what an interrupt leaves: only QAT's
resume state, from which a rerun finishes without training again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qonnx_bert.cli import main
from qonnx_bert.core.errors import UsageError
from qonnx_bert.inputs.finetune import RECIPE_DEFAULTS, complete_recipe
from qonnx_bert.training import qat
from qonnx_bert.training.qat import OUTPUTS, STATE, QatConfig, run_qat
from tests.commands.test_cli_properties import JUNK  # what a damaged JSON file might hold where a value was


@pytest.fixture(scope="module")
def work(tiny_bert_dir, tiny_ranges, glue_dir, tmp_path_factory) -> Path:
    """Inputs to misuse: a checkpoint, ranges, an earlier QAT folder holding inputs, recipes."""
    w = tmp_path_factory.mktemp("guard_training")
    shutil.copytree(tiny_bert_dir, w / "ckpt")
    shutil.copy(tiny_ranges, w / "r.json")
    shutil.copytree(tiny_bert_dir, w / "qo" / "checkpoint")
    shutil.copy(tiny_ranges, w / "qo" / "ranges.json")
    shutil.copy(tiny_ranges, w / "qo" / "checkpoint" / "r.json")
    shutil.copytree(glue_dir, w / "qo" / "checkpoint" / "glue")
    (w / "afile").write_text("not a folder")
    (w / "ro").mkdir()
    (w / "ro").chmod(0o555)
    recipe = {"base": str(w / "ckpt"), "task": "rte", "epochs": 1, "batch_size": 8, "max_train_examples": 8}
    (w / "mdl").mkdir()
    (w / "mdl" / "lr_string.json").write_text(json.dumps({**recipe, "lr": "fast"}))
    (w / "mdl" / "latin1.json").write_bytes(
        json.dumps({**recipe, "description": "caf\xe9"}, ensure_ascii=False).encode("latin-1")
    )
    (w / "mdl" / "epochs_nan.json").write_text(json.dumps({**recipe, "epochs": float("nan")}))  # JSON reads NaN
    (w / "mdl" / "seed_negative.json").write_text(json.dumps({**recipe, "seed": -1}))
    (w / "mdl" / "tiny.json").write_text(json.dumps(recipe))
    own = w / "cache" / "models" / "own"  # a built checkpoint whose recipe names itself as its base
    shutil.copytree(tiny_bert_dir, own)
    (own / "qonnx_recipe.json").write_text(json.dumps({"recipe": {"task": "rte"}}))
    (w / "mdl" / "own.json").write_text(json.dumps({**recipe, "base": str(own)}))
    return w


def qat_argv(*more: str, ckpt: str = "{w}/ckpt", data: str = "{glue}", ranges: str = "{w}/r.json") -> list[str]:
    """A ``qonnx qat`` command line of the tiny checkpoint, then ``more``."""
    return ["qat", ckpt, "--task", "rte", "--data-dir", data, "--ranges", ranges, *more]


QAT_OUT = qat_argv("--epochs", "1", "-o", "{w}/new")
BUILD = ["models", "build", "tiny", "--data-dir", "{glue}"]
CASES = {
    # inputs destroyed
    "qat -o = the checkpoint": (qat_argv("-o", "{w}/ckpt"), "is the input file {w}/ckpt"),
    "qat -o holds --ranges as ranges.json": (
        qat_argv("-o", "{w}/qo", ranges="{w}/qo/ranges.json"),
        "output {w}/qo/ranges.json is the input file",
    ),
    "qat --ranges inside -o's checkpoint/": (
        qat_argv("-o", "{w}/qo", ranges="{w}/qo/checkpoint/r.json"),
        "is the input file {w}/qo/checkpoint/r.json",
    ),
    "qat of -o's checkpoint/ into -o": (
        qat_argv("-o", "{w}/qo", ckpt="{w}/qo/checkpoint"),
        "output {w}/qo/checkpoint is the input file",
    ),
    "qat GLUE TSVs inside -o's checkpoint/": (
        qat_argv("-o", "{w}/qo", data="{w}/qo/checkpoint/glue"),
        "is the input file {w}/qo/checkpoint/glue/RTE/",
    ),
    "models build: base = its own checkpoint": (
        ["models", "build", "own", "--data-dir", "{glue}", "--force"],
        "is the input file {w}/cache/models/own",
    ),
    # numbers that crashed or trained on nothing
    "qat --lr nan": ([*QAT_OUT, "--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
    "qat --lr inf": ([*QAT_OUT, "--lr", "inf"], "argument --lr: must be a finite number > 0, got inf"),
    "qat --max-train-examples 0": ([*QAT_OUT, "--max-train-examples", "0"], "must be at least 1, got 0"),
    "qat --max-train-examples -1": ([*QAT_OUT, "--max-train-examples", "-1"], "must be at least 1, got -1"),
    "qat --seed -1": ([*QAT_OUT, "--seed", "-1"], "argument --seed: must be between 0 and 4294967295, got -1"),
    "qat --seed 2**32": ([*QAT_OUT, "--seed", str(2**32)], "must be between 0 and 4294967295"),
    "qat --epochs 0": ([*QAT_OUT, "--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    "models build --epochs nan": ([*BUILD, "--epochs", "nan"], "argument --epochs: must be a finite number > 0"),
    "models build --epochs inf": ([*BUILD, "--epochs", "inf"], "argument --epochs: must be a finite number > 0"),
    # tracebacks
    "qat -o an existing file": (qat_argv("-o", "{w}/afile"), "output folder {w}/afile is an existing file"),
    "models build: recipe lr a string": (
        ["models", "build", "lr_string", "--data-dir", "{glue}"],
        "recipe {w}/mdl/lr_string.json: key 'lr' must be an integer or a number, got \"fast\"",
    ),
    "models build: recipe not UTF-8": (
        ["models", "build", "latin1", "--data-dir", "{glue}"],
        "{w}/mdl/latin1.json is not JSON",
    ),
    "models build: recipe epochs NaN": (
        ["models", "build", "epochs_nan", "--data-dir", "{glue}"],
        "epochs_nan.json: key 'epochs' must be a finite number > 0, got nan",
    ),
    "models build: recipe seed -1": (
        ["models", "build", "seed_negative", "--data-dir", "{glue}"],
        "seed_negative.json: key 'seed' must be a finite number in [0, 2**32 - 1], got -1",
    ),
}
CASES["qat --device banana"] = ([*QAT_OUT, "--device", "banana"], "--device banana is not a device")
if not torch.cuda.is_available():
    CASES["qat --device cuda, no CUDA"] = ([*QAT_OUT, "--device", "cuda"], "this torch sees no CUDA device")
if os.geteuid() != 0:  # root writes into a read-only folder anyway
    CASES["qat -o under a read-only folder"] = (qat_argv("-o", "{w}/ro/q"), "folder {w}/ro is not writable")


@pytest.mark.parametrize("case", list(CASES))
def test_training_case_is_one_line_exit_2_and_nothing_changes(case, work, glue_dir, snapshot, capsys, monkeypatch):
    monkeypatch.setenv("QONNX_MODELS_DIR", str(work / "mdl"))
    monkeypatch.setenv("QONNX_CACHE_DIR", str(work / "cache"))
    argv, message = CASES[case]
    before = snapshot(work, glue_dir)
    code = main([a.format(w=work, glue=glue_dir) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert message.format(w=work) in err, err
    assert snapshot(work, glue_dir) == before  # nothing written, nothing changed, no temp, no folder


def test_models_build_gives_a_checkpoint_folder_with_the_users_umask(work, glue_dir, tmp_path, monkeypatch):
    """The build replaces its folder with a temporary one; ``mkdtemp`` made that 0700, unreadable to others."""
    monkeypatch.setenv("QONNX_MODELS_DIR", str(work / "mdl"))
    monkeypatch.setenv("QONNX_CACHE_DIR", str(tmp_path))
    before = os.umask(0o022)
    try:
        assert main(["models", "build", "tiny", "--data-dir", str(glue_dir)]) == 0
    finally:
        os.umask(before)
    assert (tmp_path / "models" / "tiny").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "models" / "tiny" / "qonnx_recipe.json").is_file()


def test_sigint_during_qat_exits_130_and_leaves_only_the_resume_state(work, glue_dir, tmp_path):
    """A real Ctrl-C (SIGINT to the process group) once an epoch has finished, as a terminal sends it."""
    out = tmp_path / "new" / "deep"
    argv = qat_argv("--epochs", "1000", "--max-train-examples", "8", "--batch-size", "8", "-o", str(out))
    argv = [a.format(w=work, glue=glue_dir) for a in argv]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qonnx_bert", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        # as a terminal's child: a shell's background job (CI run with `&`) would pass SIGINT on ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        for line in proc.stdout:  # tqdm.write puts the epoch lines on stdout
            if line.startswith("epoch 2:"):  # so epoch 1's state is saved
                break
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "qonnx qat: interrupted"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [
        Path("new"),
        Path("new/deep"),
        Path("new/deep") / STATE,
    ]


def test_interrupted_qat_keeps_only_its_state_and_a_rerun_resumes(
    tiny_bert_dir, glue_dir, tiny_ranges, tmp_path, monkeypatch
):
    """Before the first epoch ends nothing is left; after, only the state; interrupted while
    writing, none of the outputs; and the rerun writes them all from the state, training nothing."""
    out = tmp_path / "new" / "deep"
    config = QatConfig("rte", epochs=2, batch_size=8, max_train_examples=8)

    def run() -> dict:
        return run_qat(str(tiny_bert_dir), glue_dir, tiny_ranges, out, config, progress=False)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(qat, "_train_epoch", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run()
    assert list(tmp_path.iterdir()) == []  # the two folders it made are gone
    with monkeypatch.context() as patch:
        patch.setattr(qat, "write_model", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run()
    assert [p.name for p in tmp_path.rglob("*")] == ["new", "deep", STATE]  # no output, no temp file
    monkeypatch.setattr(qat, "_train_epoch", lambda *a, **k: pytest.fail("a finished epoch was trained again"))
    record = run()
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert all((out / name).is_file() for name in OUTPUTS) and (out / "checkpoint" / "config.json").is_file()


@settings(max_examples=150, deadline=None, derandomize=True)
@given(key=st.sampled_from(["base", "task", "description", *RECIPE_DEFAULTS]), value=JUNK)
def test_a_recipe_value_is_used_or_refused_in_one_line_naming_file_and_key(key, value):
    try:
        full = complete_recipe({"base": "minilm-l6", "task": "rte", key: value}, "recipe bad.json")
    except UsageError as err:
        assert "bad.json" in str(err) and "\n" not in str(err)
        assert repr(key) in str(err), err
        return
    for name in ("epochs", "lr", "batch_size", "max_length", "seed", "weight_decay", "warmup_ratio"):
        assert isinstance(full[name], int | float) and not isinstance(full[name], bool) and full[name] >= 0
        assert full[name] == full[name] and full[name] != float("inf")
    assert full["epochs"] > 0 and full["lr"] > 0 and full["batch_size"] >= 1 and 0 <= full["seed"] < 2**32
