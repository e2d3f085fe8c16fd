"""``qonnx calibrate model.onnx --task rte -o ranges.json``: activation ranges from FP32 runs."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="estimate activation ranges on calibration sequences (padding excluded)")
    p.add_argument("model", help="FP32 .onnx written by `qonnx export`")
    p.add_argument("-o", "--output", required=True, help="ranges JSON to write")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--task", help="GLUE task whose training split supplies the sequences (e.g. rte)")
    src.add_argument("--texts", help="a text file, one sequence per line (default: the sentences shipped with qonnx)")
    p.add_argument("--data-dir", help="GLUE TSV directory (default: $QONNX_GLUE_DIR)")
    p.add_argument("-n", "--num-sequences", type=int, default=64, help="number of sequences (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sequence sample (default 0)")
    p.add_argument("--estimator", default="current_minmax", help="NAME[:param=value,...] (see `qonnx estimators`)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ort-cache", metavar="FILE", help="also write ONNX Runtime's calibration-cache JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from qonnx_bert.calibration.calibrate import calibrate
    from qonnx_bert.calibration.sources import sequences_from_args
    from qonnx_bert.errors import UsageError
    from qonnx_bert.modelinfo import load_onnx

    if args.num_sequences < 1:
        raise UsageError("--num-sequences must be at least 1")
    model = load_onnx(args.model)
    sequences = sequences_from_args(args)
    table = calibrate(model, sequences, estimator=args.estimator, batch_size=args.batch_size)
    table.save(args.output, inputs=(args.model,))
    if args.ort_cache:
        table.save_ort_cache(args.ort_cache)
    logger.info("wrote %s: %d tensors from %d sequences (%s, padding excluded)", args.output, len(table.tensors), len(sequences), sequences.source)
    return 0
