"""``qonnx outliers model.onnx``: the paper's Figure 2 (per-token FFN ranges, outlier map) and top outlier dims."""

from __future__ import annotations

import logging

from qonnx_bert.commands.calibrate import add_tokenizer_argument
from qonnx_bert.commands.debug import add_sequence_options
from qonnx_bert.core.argtypes import non_negative_int, positive_float, positive_int

logger = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser(
        "outliers", help="where a model's activation outliers are: per layer and embedding dim, as text and a PNG"
    )
    p.add_argument("model", help="FP32 .onnx: `qonnx export`'s, TorchScript's (opset 14+) or ORT-optimized")
    add_sequence_options(p, 16)
    add_tokenizer_argument(p)
    p.add_argument(
        "--layer",
        type=non_negative_int,
        help="layer of the figure (default: the one whose FFN residual sum holds most outliers)",
    )
    p.add_argument(
        "-o", "--output", metavar="PNG", help="write the figure (needs matplotlib) and the text beside it as .md"
    )
    p.add_argument("--top", type=positive_int, default=5, help="outlier dims listed per layer (default 5)")
    p.add_argument("--sigma", type=positive_float, default=6.0, help="outlier threshold in standard deviations")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from qonnx_bert.analysis.outliers import plot, render, scan
    from qonnx_bert.core.errors import UsageError
    from qonnx_bert.core.files import atomic_outputs, guard
    from qonnx_bert.core.optional import require_matplotlib
    from qonnx_bert.inputs.ingest import load_model
    from qonnx_bert.inputs.sequences import first_sequences, source_files

    out = Path(args.output) if args.output else None
    read = source_files("dev", task=args.task, data_dir=args.data_dir, texts=args.texts)
    guard([args.model, args.tokenizer, *read], [out, out and out.with_suffix(".md")])
    if out:
        require_matplotlib("-o")
    sequences = first_sequences(args.num_sequences, task=args.task, data_dir=args.data_dir, texts=args.texts)
    result = scan(load_model(args.model, args.tokenizer), sequences, sigma=args.sigma)
    if args.layer is not None and not 0 <= args.layer < result.num_layers:
        raise UsageError(f"--layer {args.layer} is out of range: this model has layers 0-{result.num_layers - 1}")
    layer = result.worst_layer() if args.layer is None else args.layer
    text = render(result, top=args.top)
    print(text)
    if out:
        with atomic_outputs(out, out.with_suffix(".md")) as (png, md):
            plot(result, layer, str(png))
            md.write_text(f"Figure: layer {layer}.\n\n{text}\n")
        logger.info("wrote %s (layer %d) and %s", out, layer, out.with_suffix(".md"))
    return 0
