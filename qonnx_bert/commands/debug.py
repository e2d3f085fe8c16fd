"""``qonnx debug fp32.onnx quant.onnx``: per-role SQNR and MSE of a quantized model, worst first."""

from __future__ import annotations

import logging

from qonnx_bert.commands.calibrate import add_tokenizer_argument
from qonnx_bert.core.argtypes import positive_int

logger = logging.getLogger(__name__)


def add_sequence_options(p, default_n: int) -> None:
    """``--texts FILE | --task T [--data-dir D]`` and ``-n``: which sequences to run (the first N)."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--task", help="GLUE task whose dev split supplies the sequences (e.g. rte)")
    src.add_argument("--texts", help="a text file, one sequence per line (default: the sentences shipped with qonnx)")
    p.add_argument("--data-dir", help="GLUE TSV directory (default: $QONNX_GLUE_DIR)")
    p.add_argument(
        "-n",
        "--num-sequences",
        type=positive_int,
        default=default_n,
        help=f"the first N sequences (default {default_n})",
    )


def register(sub) -> None:
    p = sub.add_parser("debug", help="per-role SQNR/MSE between an FP32 model and its quantized version, worst first")
    p.add_argument("fp32", help="FP32 .onnx written by `qonnx export`")
    p.add_argument("quantized", help="QDQ .onnx written by `qonnx quantize` from it")
    add_sequence_options(p, 8)
    add_tokenizer_argument(p)
    p.add_argument(
        "--plot", metavar="PNG", help="also draw a bar plot (needs matplotlib) and write the table beside it as .md"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from qonnx_bert.analysis.debug import compare, plot_errors, render_errors
    from qonnx_bert.core.errors import UsageError
    from qonnx_bert.core.files import atomic_outputs, guard
    from qonnx_bert.core.modelinfo import load_onnx, quantized_nodes
    from qonnx_bert.core.optional import require_matplotlib
    from qonnx_bert.inputs.ingest import load_model
    from qonnx_bert.inputs.sequences import first_sequences, source_files

    plot = Path(args.plot) if args.plot else None
    read = source_files("dev", task=args.task, data_dir=args.data_dir, texts=args.texts)
    guard([args.fp32, args.quantized, args.tokenizer, *read], [plot, plot and plot.with_suffix(".md")])
    if plot:
        require_matplotlib("--plot")
    sequences = first_sequences(args.num_sequences, task=args.task, data_dir=args.data_dir, texts=args.texts)
    quantized = load_onnx(args.quantized)
    if not quantized_nodes(quantized):
        raise UsageError(f"{args.quantized} holds no quantized node; pass the model `qonnx quantize` wrote")
    errors = compare(load_model(args.fp32, args.tokenizer), quantized, sequences)
    table = render_errors(errors)
    head = (
        f"{args.quantized} vs {args.fp32}: {len(sequences)} sequences ({sequences.source}), padding excluded, "
        "worst first."
    )
    print(head + "\n\n" + table)
    if plot:
        with atomic_outputs(plot, plot.with_suffix(".md")) as (png, md):
            plot_errors(errors, str(png), title=f"{Path(args.quantized).name}: SQNR per role vs FP32")
            md.write_text(head + "\n\n" + table + "\n")
        logger.info("wrote %s and %s", plot, plot.with_suffix(".md"))
    return 0
