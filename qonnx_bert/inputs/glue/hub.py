"""Load a GLUE task from the Hugging Face hub (``nyu-mll/glue``) instead of TSV files.

For machines that can reach the hub and have ``datasets`` installed (the ``glue``
extra). The result is the same :class:`GlueSplit` as :func:`load_task` gives, with
labels in the order of ``TaskSpec.labels``.
"""

from __future__ import annotations

import numpy as np

from qonnx_bert.core.errors import UsageError
from qonnx_bert.inputs.glue.tasks import GlueSplit, TaskSpec, get_task

HUB_DATASET = "nyu-mll/glue"

# (text_a column, text_b column) of each hub config.
_COLUMNS = {
    "cola": ("sentence", None),
    "sst2": ("sentence", None),
    "mrpc": ("sentence1", "sentence2"),
    "stsb": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
}
# Hub label names where their order differs from TaskSpec.labels; other tasks match index for index.
_HUB_LABELS = {"mnli": ("entailment", "neutral", "contradiction")}


def hub_split_name(task: TaskSpec, split: str) -> str:
    """The hub split for ``train``/``dev`` (MNLI's dev is ``validation_matched``)."""
    if split not in ("train", "dev"):
        raise UsageError(f"unknown split {split!r}; use train or dev")
    if split == "train":
        return "train"
    return "validation_matched" if task.name == "mnli" else "validation"


def remap_labels(task: TaskSpec, hub_labels) -> np.ndarray:
    """Hub label ids to TaskSpec label indices (float scores for STS-B)."""
    y = np.asarray(hub_labels)
    if task.labels is None:
        return y.astype(np.float32)
    names = _HUB_LABELS.get(task.name)
    if names is None:
        return y.astype(np.int64)
    return np.asarray([task.labels.index(names[i]) for i in y], dtype=np.int64)


def load_task_from_hub(name: str, split: str) -> GlueSplit:
    """Load ``split`` ("train" or "dev") of a GLUE task from ``nyu-mll/glue``."""
    task = get_task(name)
    hub_split = hub_split_name(task, split)
    fix = "pass `data_dir`, a GLUE TSV folder"
    try:
        import datasets
    except ImportError:
        raise UsageError(
            f"loading GLUE from the hub needs the 'datasets' package (pip install qonnx-bert[glue]); or {fix}"
        ) from None
    try:
        ds = datasets.load_dataset(HUB_DATASET, task.name, split=hub_split)
    except Exception as err:  # offline, unreachable, not cached: all mean "use the TSVs"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"cannot load {HUB_DATASET}/{task.name} from the hub ({reason}); {fix}") from err
    col_a, col_b = _COLUMNS[task.name]
    return GlueSplit(
        task, list(ds[col_a]), None if col_b is None else list(ds[col_b]), remap_labels(task, list(ds["label"]))
    )
