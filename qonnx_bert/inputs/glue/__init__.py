"""GLUE tasks: TSV loaders and the metrics of the GLUE paper."""

from qonnx_bert.inputs.glue.metrics import predictions_from_logits, score
from qonnx_bert.inputs.glue.tasks import TASKS, GlueSplit, TaskSpec, load_task, resolve_data_dir

__all__ = ["TASKS", "GlueSplit", "TaskSpec", "load_task", "predictions_from_logits", "resolve_data_dir", "score"]
