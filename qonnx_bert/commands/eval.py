"""``qonnx eval model.onnx --task rte``: the GLUE metric on the dev set, in ONNX Runtime."""

from __future__ import annotations

import logging
from pathlib import Path

from qonnx_bert.commands.calibrate import add_tokenizer_argument
from qonnx_bert.commands.check import add_target_options
from qonnx_bert.core.argtypes import positive_int

logger = logging.getLogger(__name__)


def add_glue_task_arguments(p, task_help: str) -> None:
    p.add_argument("--task", required=True, help=task_help)
    p.add_argument("--data-dir", help="GLUE TSV directory (default: $QONNX_GLUE_DIR)")


def register(sub) -> None:
    p = sub.add_parser("eval", help="score a model on a GLUE dev set (ONNX Runtime CPU, or a PyTorch checkpoint dir)")
    p.add_argument("model", help=".onnx file, or a Hugging Face checkpoint directory (evaluated in PyTorch)")
    add_glue_task_arguments(p, "GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte")
    p.add_argument("--limit", type=positive_int, help="evaluate the first N dev examples only")
    p.add_argument("--batch-size", type=positive_int, default=16, help="sequences per run (default 16)")
    add_target_options(p, eps=("cpu", "qnn-htp"))
    add_tokenizer_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from qonnx_bert.core.files import guard
    from qonnx_bert.inputs.glue import load_task
    from qonnx_bert.inputs.glue.tasks import limit_split

    guard([args.model], [])
    split = limit_split(load_task(args.task, "dev", args.data_dir), args.limit)
    if args.ep != "cpu":
        return run_emulated(args, split)
    if Path(args.model).is_dir():
        metrics = evaluate_checkpoint(args.model, split)
        runtime = "PyTorch"
    else:
        from qonnx_bert.analysis.evaluate import evaluate
        from qonnx_bert.inputs.ingest import load_model

        metrics = evaluate(load_model(args.model, args.tokenizer), split, batch_size=args.batch_size).metrics
        runtime = "ONNX Runtime CPU"
    shown = "  ".join(f"{k}={v:.2f}" if k == "score" else f"{k}={v:.4f}" for k, v in metrics.items())
    print(f"{split.task.name} dev ({len(split)} examples, {runtime}): {shown}")
    return 0


def evaluate_checkpoint(path: str, split) -> dict[str, float]:
    """A fine-tuned classifier's GLUE metric; a checkpoint without a trained head is scored as an embedding model.

    Its seeded stand-in head would give a chance-level score with exit 0: refused for
    classification, and STS-B is scored zero-shot (cosine Spearman) as its ONNX export would be.
    """
    import numpy as np

    from qonnx_bert.analysis.evaluate import similarity_metrics
    from qonnx_bert.core.errors import UsageError
    from qonnx_bert.inputs.embedding import embed_torch
    from qonnx_bert.inputs.finetune import evaluate_torch
    from qonnx_bert.inputs.models import resolve_model

    source = resolve_model(path)
    if source.head_seed is None:
        return evaluate_torch(path, split)
    if split.texts_b is None or split.task.labels is not None:
        raise UsageError(
            f"{path} has no trained classification head: fine-tune it for {split.task.name} "
            "(`qonnx models build`), or score it as a sentence-embedding model with --task stsb"
        )
    a, b = (embed_torch(source, texts) for texts in (split.texts_a, split.texts_b))
    return similarity_metrics(np.sum(a * b, axis=1), split.labels)  # unit vectors: the dot is the cosine


def run_emulated(args, split) -> int:
    """``--ep qnn-htp``: the metric of the HTP graph (emulated on x86) and its agreement with the CPU provider."""
    from qonnx_bert.analysis.emulate import evaluate_emulated
    from qonnx_bert.core.modelinfo import load_onnx
    from qonnx_bert.targets import require_ep
    from qonnx_bert.targets.qnn import resolve_soc

    require_ep(args.ep)
    soc = resolve_soc(args.soc)
    result = evaluate_emulated(load_onnx(args.model), split, soc)
    for name, res in ((f"QNN HTP {soc.name}, emulated", result.htp), ("ONNX Runtime CPU", result.cpu)):
        shown = "  ".join(f"{k}={v:.2f}" if k == "score" else f"{k}={v:.4f}" for k, v in res.metrics.items())
        print(f"{split.task.name} dev ({len(split)} examples, {name}): {shown}")
    print(
        f"HTP vs CPU provider: same prediction on {result.agreement:.1%} of {len(split)} examples; "
        f"emulator {result.seconds_per_sequence:.2f} s/sequence"
    )
    print(
        f"CPU provider's integer kernels vs the same QDQ graph computed in float: {result.cpu_self_agreement:.1%} "
        "(how far two correct implementations of this model drift apart)"
    )
    return 0
