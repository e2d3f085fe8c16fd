"""GLUE loaders: every task from the TSV samples in tests/data/glue, and the hub loader's error path."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from qonnx_bert.core.errors import UsageError
from qonnx_bert.inputs.glue import TASKS, load_task, resolve_data_dir
from qonnx_bert.inputs.glue.hub import load_task_from_hub, remap_labels
from qonnx_bert.inputs.glue.tasks import GLUE_DIR_VARIABLE, get_task, limit_split

GLUE = Path(__file__).parents[2] / "data" / "glue"

# Labelled rows per sample file. QQP train has one truncated row and MNLI dev one
# gold_label "-" (no annotator consensus); both are skipped, as in the real dumps.
ROWS = {name: {"train": 24, "dev": 24} for name in ("cola", "sst2", "mrpc", "stsb", "rte", "qnli")}
ROWS |= {"qqp": {"train": 16, "dev": 16}, "mnli": {"train": 16, "dev": 16}}


@pytest.mark.parametrize("split", ["train", "dev"])
@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_loads(name, split):
    data = load_task(name, split, GLUE)
    task = TASKS[name]
    assert data.task is task
    assert len(data) == len(data.labels) == ROWS[name][split]
    assert all(isinstance(t, str) and t.strip() for t in data.texts_a)
    if task.text_b is None:
        assert data.texts_b is None
    else:
        assert len(data.texts_b) == len(data) and all(t.strip() for t in data.texts_b)
    if task.labels is None:
        assert data.labels.dtype == np.float32
        assert data.labels.min() >= 0.0 and data.labels.max() <= 5.0
    else:
        assert data.labels.dtype == np.int64
        assert set(data.labels.tolist()) == set(range(task.num_labels))  # every class present


def test_mrpc_bom_header():
    path = GLUE / "MRPC" / "train.tsv"
    assert path.read_bytes().startswith(b"\xef\xbb\xbfQuality\t")  # as shipped in the GLUE download
    data = load_task("mrpc", "train", GLUE)
    assert data.texts_a[0].startswith("Amrozi accused his brother")
    assert data.labels[:2].tolist() == [1, 0]


def test_label_mapping_follows_taskspec_order():
    mnli = load_task("mnli", "dev", GLUE)  # first rows: neutral, contradiction, entailment
    assert mnli.labels[:3].tolist() == [2, 0, 1]
    rte = load_task("rte", "dev", GLUE)  # first row: not_entailment
    assert rte.labels[0] == 1
    stsb = load_task("stsb", "dev", GLUE)
    assert stsb.labels[:2].tolist() == [5.0, 4.75]


def test_cola_has_no_header():
    data = load_task("cola", "train", GLUE)
    assert data.texts_a[0].startswith("Our friends won't buy this analysis")


def test_aliases_and_data_dir_variable(monkeypatch):
    assert get_task("SST-2") is TASKS["sst2"] and get_task("MNLI-m") is TASKS["mnli"]
    monkeypatch.setenv(GLUE_DIR_VARIABLE, str(GLUE))
    assert len(load_task("STS-B", "dev")) == 24


def test_limit_split():
    data = load_task("rte", "train", GLUE)
    head = limit_split(data, 5)
    assert len(head) == 5 and len(head.texts_b) == 5 and head.labels.tolist() == data.labels[:5].tolist()
    assert limit_split(data, None) is data
    with pytest.raises(UsageError, match="`limit=0`: must be at least 1"):
        limit_split(data, 0)


def test_unknown_task_and_split():
    with pytest.raises(UsageError, match=r"unknown GLUE task 'wnli'; choose one of: cola, sst2"):
        load_task("wnli", "dev", GLUE)
    with pytest.raises(UsageError, match="use train or dev"):
        load_task("rte", "test", GLUE)


def test_missing_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(GLUE_DIR_VARIABLE, raising=False)
    with pytest.raises(UsageError, match=f"pass `data_dir` or set {GLUE_DIR_VARIABLE}"):
        resolve_data_dir(None)
    with pytest.raises(UsageError, match="does not exist; pass `data_dir`"):
        load_task("rte", "dev", tmp_path / "nowhere")


def test_missing_file(tmp_path):
    (tmp_path / "RTE").mkdir()
    with pytest.raises(UsageError, match=r"`data_dir` must hold MNLI/dev_matched.tsv"):
        load_task("mnli", "dev", tmp_path)
    with pytest.raises(UsageError, match=r"RTE/train.tsv"):
        load_task("rte", "train", tmp_path)


def test_wrong_file_names_missing_column(tmp_path):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "dev.tsv").write_text("index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(UsageError, match="no column 'sentence1'"):
        load_task("rte", "dev", tmp_path)


# --- hub loader: no network here, so only the error paths and the label remapping ---


def test_hub_offline_raises_usage_error(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # the flags are read when the libraries are imported; set them on the live modules too
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)  # no cached copy to fall back on
    with pytest.raises(UsageError, match="pass `data_dir`, a GLUE TSV folder") as err:
        load_task_from_hub("rte", "dev")
    assert "\n" not in str(err.value)


def test_hub_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(UsageError, match="needs the 'datasets' package.*`data_dir`"):
        load_task_from_hub("sst2", "train")


def test_hub_columns_splits_and_mnli_remap(monkeypatch):
    calls = []

    def load_dataset(path, config, split):
        calls.append((path, config, split))
        # HF MNLI order: 0 entailment, 1 neutral, 2 contradiction
        return {"premise": ["p1", "p2", "p3"], "hypothesis": ["h1", "h2", "h3"], "label": [0, 1, 2]}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    data = load_task_from_hub("mnli", "dev")
    assert calls == [("nyu-mll/glue", "mnli", "validation_matched")]
    assert data.texts_a == ["p1", "p2", "p3"] and data.texts_b == ["h1", "h2", "h3"]
    names = TASKS["mnli"].labels
    assert [names[i] for i in data.labels] == ["entailment", "neutral", "contradiction"]
    assert data.labels.dtype == np.int64


def test_hub_label_remap_other_tasks():
    np.testing.assert_array_equal(remap_labels(TASKS["rte"], [0, 1]), [0, 1])  # same order as TaskSpec
    stsb = remap_labels(TASKS["stsb"], [4.5, 0.0])
    assert stsb.dtype == np.float32 and stsb.tolist() == [4.5, 0.0]
