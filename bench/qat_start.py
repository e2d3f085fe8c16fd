"""Where QAT starts: the simulated dev score of the untrained QAT module (the PTQ ranges), per task.

``bench/lowbit.py`` records the dev score QAT's PyTorch simulation reaches after each epoch
(``qat.json``) and the deployed file's score under ONNX Runtime's fused kernels; this gives the
first number's starting point on the same footing, so an epoch's gain is read against the
simulation, not against a PTQ score from other kernels.

    python bench/qat_start.py --work bench/results/lowbit-minilm-l6-qat/work --tasks rte,mrpc,stsb \
        --data-dir ../shared/data/glue --out bench/results/lowbit-minilm-l6-qat/qat-start.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx

from qonnx_bert.calibration.ranges import RangeTable
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.files import atomic_output, guard
from qonnx_bert.inputs.finetune import encode, score_logits
from qonnx_bert.inputs.glue import load_task
from qonnx_bert.inputs.glue.tasks import get_task, split_file
from qonnx_bert.inputs.models import resolve_model
from qonnx_bert.training.qat import QatConfig, predict, trainable_module


def start_score(work: Path, task: str, scheme: str, data_dir: str, checkpoint: str) -> float:
    """The untrained module's simulated dev score, from the bench's ``fp32.onnx`` and ``ranges.json``."""
    from transformers import AutoTokenizer

    fp32, ranges = onnx.load(str(work / task / "fp32.onnx")), RangeTable.load(work / task / "ranges.json")
    config = QatConfig(task, scheme)
    module = trainable_module(fp32, config, ranges)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(checkpoint).path)
    dev = load_task(task, "dev", data_dir)
    logits = predict(
        module, encode(tokenizer, dev, config.max_length), 64, tokenizer.pad_token_id or 0, get_task(task).num_labels
    )
    return score_logits(dev, logits)["score"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="bench/lowbit.py's OUTPUT/work")
    p.add_argument("--tasks", default="rte,mrpc,stsb")
    p.add_argument("--scheme", default="w8a8")
    p.add_argument("--model", default="minilm-l6", help="recipe prefix: the checkpoint of task T is MODEL-T")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    tasks = args.tasks.split(",")
    reads = [args.work / t / f for t in tasks for f in ("fp32.onnx", "ranges.json")]
    try:  # the bench's models and ranges and the dev splits are read: --out must be none of them
        guard([*reads, *(split_file(t, "dev", args.data_dir) for t in tasks)], [args.out])
    except UsageError as err:
        p.error(str(err))
    lines = [
        f"# Where {args.scheme} QAT starts: the untrained module's simulated dev score",
        "",
        f"`python bench/qat_start.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        "| task | simulated dev score before training |",
        "|---|---:|",
    ]
    for task in tasks:
        score = start_score(args.work, task, args.scheme, args.data_dir, f"{args.model}-{task}")
        lines.append(f"| {task} | {score:.2f} |")
        print(lines[-1])
    with atomic_output(args.out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
