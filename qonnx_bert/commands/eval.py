"""``qonnx eval model.onnx --task rte``: the GLUE metric on the dev set, in ONNX Runtime."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("eval", help="score a model on a GLUE dev set (ONNX Runtime CPU, or a PyTorch checkpoint dir)")
    p.add_argument("model", help=".onnx file, or a Hugging Face checkpoint directory (evaluated in PyTorch)")
    p.add_argument("--task", required=True, help="GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte")
    p.add_argument("--data-dir", help="GLUE TSV directory (default: $QONNX_GLUE_DIR)")
    p.add_argument("--limit", type=int, help="evaluate the first N dev examples only")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=run)


def run(args) -> int:
    from qonnx_bert.glue import load_task
    from qonnx_bert.glue.tasks import limit_split

    split = limit_split(load_task(args.task, "dev", args.data_dir), args.limit)
    if Path(args.model).is_dir():
        from qonnx_bert.finetune import evaluate_torch

        metrics = evaluate_torch(args.model, split)
        runtime = "PyTorch"
    else:
        from qonnx_bert.evaluate import evaluate
        from qonnx_bert.modelinfo import load_onnx

        metrics = evaluate(load_onnx(args.model), split, batch_size=args.batch_size).metrics
        runtime = "ONNX Runtime CPU"
    shown = "  ".join(f"{k}={v:.2f}" if k == "score" else f"{k}={v:.4f}" for k, v in metrics.items())
    print(f"{split.task.name} dev ({len(split)} examples, {runtime}): {shown}")
    return 0
