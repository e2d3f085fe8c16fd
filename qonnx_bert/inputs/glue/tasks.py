"""The 8 GLUE tasks of the paper, read from a standard GLUE TSV directory.

The directory layout is the one of the original GLUE download
(``<dir>/RTE/train.tsv``, ``<dir>/MNLI/dev_matched.tsv``, ...). The data
directory comes from ``--data-dir`` or the ``QONNX_GLUE_DIR`` variable.
"""

from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qonnx_bert.core.errors import UsageError

GLUE_DIR_VARIABLE = "QONNX_GLUE_DIR"


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's columns are and how it is scored."""

    name: str
    folder: str
    text_a: str | int
    text_b: str | int | None
    label: str | int
    labels: tuple[str, ...] | None  # None: regression (STS-B)
    metric: str  # "mcc", "accuracy", "accuracy_f1", "pearson_spearman"
    header: bool = True
    dev_file: str = "dev.tsv"

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("cola", "CoLA", 3, None, 1, ("0", "1"), "mcc", header=False),
        TaskSpec("sst2", "SST-2", "sentence", None, "label", ("0", "1"), "accuracy"),
        TaskSpec("mrpc", "MRPC", "#1 String", "#2 String", "Quality", ("0", "1"), "accuracy_f1"),
        TaskSpec("stsb", "STS-B", "sentence1", "sentence2", "score", None, "pearson_spearman"),
        TaskSpec("qqp", "QQP", "question1", "question2", "is_duplicate", ("0", "1"), "accuracy_f1"),
        TaskSpec(
            "mnli",
            "MNLI",
            "sentence1",
            "sentence2",
            "gold_label",
            ("contradiction", "entailment", "neutral"),
            "accuracy",
            dev_file="dev_matched.tsv",
        ),
        TaskSpec("qnli", "QNLI", "question", "sentence", "label", ("entailment", "not_entailment"), "accuracy"),
        TaskSpec("rte", "RTE", "sentence1", "sentence2", "label", ("entailment", "not_entailment"), "accuracy"),
    )
}

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli_matched": "mnli"}


@dataclass(frozen=True)
class GlueSplit:
    """One split of a task: texts and labels (class index, or float score for STS-B)."""

    task: TaskSpec
    texts_a: list[str]
    texts_b: list[str] | None
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.texts_a)


def get_task(name: str) -> TaskSpec:
    """The task spec for a name like ``rte`` or ``SST-2``; a clear error otherwise."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        raise UsageError(f"unknown GLUE task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[key]


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The GLUE directory from the argument or ``QONNX_GLUE_DIR``."""
    if data_dir is None:
        data_dir = os.environ.get(GLUE_DIR_VARIABLE)
    if data_dir is None:
        raise UsageError(f"no GLUE data directory; pass `data_dir` or set {GLUE_DIR_VARIABLE}")
    path = Path(data_dir)
    if not path.is_dir():
        raise UsageError(
            f"GLUE data directory {path} does not exist; pass `data_dir`: the folder holding RTE/, SST-2/, ..."
        )
    return path


def _split_file(task: TaskSpec, data_dir: Path, split: str) -> Path:
    if split not in ("train", "dev"):
        raise UsageError(f"unknown split {split!r}; use train or dev")
    name = task.dev_file if split == "dev" else "train.tsv"
    path = data_dir / task.folder / name
    if not path.is_file():
        raise UsageError(f"{path} not found; `data_dir` must hold {task.folder}/{name} (standard GLUE layout)")
    return path


def split_file(name: str, split: str, data_dir: str | Path | None = None) -> Path:
    """The TSV file ``load_task`` reads, for the path guard to protect before any work."""
    return _split_file(get_task(name), resolve_data_dir(data_dir), split)


def _rows(path: Path, header: bool) -> tuple[list[str] | None, list[list[str]]]:
    csv.field_size_limit(sys.maxsize)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as err:
        raise UsageError(
            f"{path} is not UTF-8 text (byte {err.start}); use the file of a standard GLUE download"
        ) from None
    if not rows:
        raise UsageError(f"{path} is empty; use the file of a standard GLUE download")
    if header:
        return rows[0], rows[1:]
    return None, rows


def _column(task: TaskSpec, head: list[str] | None, key: str | int, path: Path) -> int:
    if isinstance(key, int):
        return key
    if head is None or key not in head:
        raise UsageError(f"{path} has no column {key!r}; is it the {task.folder} file of a standard GLUE download?")
    return head.index(key)


def load_task(name: str, split: str, data_dir: str | Path | None = None) -> GlueSplit:
    """Load ``split`` ("train" or "dev") of a GLUE task from its TSV file.

    Rows whose label is missing or unknown (a few in QQP/MNLI dumps) are skipped.
    """
    task = get_task(name)
    path = _split_file(task, resolve_data_dir(data_dir), split)
    head, rows = _rows(path, task.header)
    ia = _column(task, head, task.text_a, path)
    ib = None if task.text_b is None else _column(task, head, task.text_b, path)
    il = _column(task, head, task.label, path)
    texts_a, texts_b, labels = [], [], []
    width = max(ia, ib or 0, il) + 1
    for row in rows:
        if len(row) < width:
            continue
        raw = row[il].strip()
        if task.labels is None:
            try:
                label = float(raw)
            except ValueError:
                continue
        elif raw in task.labels:
            label = task.labels.index(raw)
        else:
            continue
        texts_a.append(row[ia])
        if ib is not None:
            texts_b.append(row[ib])
        labels.append(label)
    if not labels:
        raise UsageError(f"{path} holds no labelled rows; check that it is the {task.folder} {split} file")
    dtype = np.float32 if task.labels is None else np.int64
    return GlueSplit(task, texts_a, texts_b if ib is not None else None, np.asarray(labels, dtype=dtype))


def limit_split(split: GlueSplit, limit: int | None) -> GlueSplit:
    """The first ``limit`` examples (all when ``limit`` is None)."""
    if limit is None:
        return split
    if limit < 1:
        raise UsageError(f"`limit={limit}`: must be at least 1")
    b = None if split.texts_b is None else split.texts_b[:limit]
    return GlueSplit(split.task, split.texts_a[:limit], b, split.labels[:limit])
