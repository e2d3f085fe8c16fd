"""``qonnx qat CHECKPOINT --task rte --ranges init.ranges.json -o out/``: quantization-aware training."""

from __future__ import annotations

import logging

from qonnx_bert.commands.eval import add_glue_task_arguments
from qonnx_bert.commands.lowbit_flags import add_lowbit_arguments, lowbit_from_args
from qonnx_bert.core.argtypes import int_in, positive_float, positive_int

logger = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("qat", help="fine-tune through the quantized graph with learned ranges (paper, Section 5)")
    p.add_argument("checkpoint", help="a fine-tuned classifier: models/ recipe name or local Hugging Face directory")
    add_glue_task_arguments(p, "GLUE task to train on (its train split) and score (dev)")
    p.add_argument(
        "--scheme",
        default="w8a8",
        help="scheme trained through: w8a8, mp (the paper's 16-bit FFN tensors), peg, or w8a32 (weights only)",
    )
    p.add_argument("--ranges", required=True, help="PTQ ranges of the checkpoint's export (`qonnx calibrate`)")
    p.add_argument("-o", "--output", required=True, help="output folder (a rerun resumes after its last epoch)")
    p.add_argument("--epochs", type=positive_int, default=3, help="(default 3)")
    p.add_argument("--lr", type=positive_float, default=2e-5, help="peak learning rate of the weights (default 2e-5)")
    p.add_argument(
        "--range-lr",
        type=positive_float,
        default=1e-3,
        help="peak learning rate of the activation ranges' log scale: a relative change per step (default 1e-3)",
    )
    p.add_argument(
        "--distill",
        type=float,  # QatConfig checks the range
        default=0.0,
        metavar="WEIGHT",
        help="train towards the FP32 model's outputs with this weight, the labels with 1 - WEIGHT (default 0)",
    )
    p.add_argument("--batch-size", type=positive_int, default=32, help="(default 32)")
    p.add_argument("--max-train-examples", type=positive_int, help="a seeded subset of the training split")
    p.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0, help="(default 0)")
    p.add_argument(
        "--device",
        default="cpu",
        help="where to train: cpu (default), cuda, cuda:N, or auto (CUDA when torch sees one); resumes on any",
    )
    add_lowbit_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from qonnx_bert.training.qat import QatConfig, run_qat

    config = QatConfig(
        args.task,
        args.scheme,
        lowbit_from_args(args),
        epochs=args.epochs,
        lr=args.lr,
        range_lr=args.range_lr,
        distill=args.distill,
        batch_size=args.batch_size,
        seed=args.seed,
        max_train_examples=args.max_train_examples,
    )
    record = run_qat(args.checkpoint, args.data_dir, args.ranges, args.output, config, device=args.device)
    last = record["history"][-1]["dev"]["score"] if record["history"] else float("nan")
    logger.info("wrote %s/{checkpoint,ranges.json,model.qdq.onnx}; dev score %.2f", args.output, last)
    return 0
