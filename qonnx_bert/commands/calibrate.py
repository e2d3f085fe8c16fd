"""``qonnx calibrate model.onnx --task rte -o ranges.json``: activation ranges from FP32 runs."""

from __future__ import annotations

import logging

from qonnx_bert.core.argtypes import int_in, positive_float, positive_int

logger = logging.getLogger(__name__)

MAX_MEMORY_HELP = (  # the default lives in qonnx_bert.calibration.memory.DEFAULT_MAX_MEMORY_MB
    "bound, in MB, on the activations one batch exposes at a time (default 512). The graph is cut into "
    "segments that each expose a share of the tensors, sized from their shapes at --batch-size x the longest "
    "sequence; a batch flows through the segments in turn, so nothing is computed twice. On top of the bound: "
    "the weights, held once, the few tensors carried between segments (residual stream, attention mask), and "
    "the estimators' temporaries (a few times the largest single tensor). BERT-base, batch 8 x 128 tokens: "
    "about 1.3 GB of activations in all, peak RSS about 1.3 GB at the default"
)


def add_tokenizer_argument(p) -> None:
    """``--tokenizer DIR``, shared by the commands that read an FP32 model and encode text."""
    from qonnx_bert.inputs.ingest import TOKENIZER_HELP

    p.add_argument("--tokenizer", metavar="DIR", help=TOKENIZER_HELP)


def add_external_data_argument(p) -> None:
    """``--external-data``: for models over protobuf's 2 GB limit (export, quantize)."""
    p.add_argument(
        "--external-data",
        action="store_true",
        help="write the weights to OUTPUT.data beside the .onnx (needed over 2 GB, e.g. XLM-R-large)",
    )


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="estimate activation ranges on calibration sequences (padding excluded)")
    p.add_argument("model", help="FP32 .onnx: `qonnx export`'s, TorchScript's (opset 14+) or ORT-optimized")
    p.add_argument("-o", "--output", required=True, help="ranges JSON to write")
    add_tokenizer_argument(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--task", help="GLUE task whose training split supplies the sequences (e.g. rte)")
    src.add_argument("--texts", help="a text file, one sequence per line (default: the sentences shipped with qonnx)")
    p.add_argument("--data-dir", help="GLUE TSV directory (default: $QONNX_GLUE_DIR)")
    p.add_argument("-n", "--num-sequences", type=positive_int, default=64, help="number of sequences (default 64)")
    p.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0, help="seed of the sequence sample (default 0)")
    p.add_argument(
        "--estimator",
        metavar="NAME[:k=v,...]",
        help="estimator for every tensor (default current_minmax; see `qonnx estimators`); "
        "with --recipe, replaces the recipe's default",
    )
    p.add_argument(
        "--recipe",
        metavar="FILE",
        help="JSON recipe choosing an estimator per role glob (examples: calibration/*.json)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=8, help="sequences per batch, bucketed by length (default 8)"
    )
    p.add_argument("--max-memory", type=positive_float, metavar="MB", help=MAX_MEMORY_HELP)
    p.add_argument("--ort-cache", metavar="FILE", help="also write ONNX Runtime's calibration-cache JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from qonnx_bert.calibration.calibrate import calibrate
    from qonnx_bert.calibration.memory import DEFAULT_MAX_MEMORY_MB
    from qonnx_bert.calibration.segments import SplitModel
    from qonnx_bert.core.files import atomic_outputs, guard
    from qonnx_bert.inputs.sequences import calibration_sequences, source_files

    read = source_files("train", task=args.task, data_dir=args.data_dir, texts=args.texts)
    guard([args.model, args.tokenizer, args.recipe, *read], [args.output, args.ort_cache])
    model = SplitModel.load(args.model, args.tokenizer)  # the full protobuf is dropped: weights held once
    sequences = calibration_sequences(
        args.num_sequences, args.seed, task=args.task, data_dir=args.data_dir, texts=args.texts
    )
    table = calibrate(
        model,
        sequences,
        estimator=args.estimator,
        recipe=args.recipe,
        batch_size=args.batch_size,
        max_memory=DEFAULT_MAX_MEMORY_MB if args.max_memory is None else args.max_memory,
    )
    with atomic_outputs(*filter(None, (args.output, args.ort_cache))) as (ranges_tmp, *cache_tmp):
        table.write(ranges_tmp)  # both files, or neither: they are renamed together
        if cache_tmp:
            table.save_ort_cache(cache_tmp[0])
    logger.info(
        "wrote %s: %d tensors from %d sequences (%s, padding excluded)",
        args.output,
        len(table.tensors),
        len(sequences),
        sequences.source,
    )
    return 0
