"""``qonnx export SOURCE -o model.onnx``: HF classifier -> ONNX, checked against PyTorch; or an ONNX
file's fixed-shape twin (``qonnx export model.onnx --static-shape 1,128``), checked against the file."""

from __future__ import annotations

import logging

from qonnx_bert.commands.calibrate import add_external_data_argument
from qonnx_bert.core.argtypes import positive_int

logger = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("export", help="export a BERT-style classifier to ONNX (opset 21)")
    p.add_argument(
        "source",
        help="minilm-l6 (packaged default), a models/ recipe name, a local Hugging Face directory, or an "
        ".onnx file to make a fixed-shape twin of (with --static-shape)",
    )
    p.add_argument("-o", "--output", required=True, help="output .onnx file")
    p.add_argument("--static-shape", metavar="B,T", help="fixed batch and sequence length (edge runtimes), e.g. 1,128")
    p.add_argument(
        "--max-length",
        type=positive_int,
        default=128,
        help="truncation length for dynamic models, at most the model's max positions (default 128)",
    )
    add_external_data_argument(p)
    p.add_argument(
        "--task",
        choices=("text-classification", "feature-extraction"),
        default="text-classification",
        help="text-classification: logits (default); feature-extraction: mean-pooled, L2-normalised "
        "sentence_embedding plus last_hidden_state (sentence-transformers models such as minilm-l6)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    if args.source.endswith(".onnx"):
        return _static_twin(args)
    from qonnx_bert.core.files import guard, model_outputs
    from qonnx_bert.inputs.export import export_model, parse_static_shape
    from qonnx_bert.inputs.models import resolve_model

    guard([resolve_model(args.source).path], model_outputs(args.output, args.external_data))
    result = export_model(
        args.source,
        args.output,
        static_shape=parse_static_shape(args.static_shape),
        max_length=args.max_length,
        external_data=args.external_data,
        task=args.task,
    )
    logger.info(
        "wrote %s (%d nodes); max |%s difference| vs PyTorch %.2e (limit 1e-4)",
        result.path,
        result.num_nodes,
        "output" if args.task == "feature-extraction" else "logit",
        result.max_abs_diff,
    )
    return 0


def _static_twin(args) -> int:
    """An exported (dynamic) ONNX file with its shapes fixed: for QNN HTP without a second PyTorch export."""
    from qonnx_bert.core.errors import UsageError
    from qonnx_bert.core.files import atomic_outputs, guard, model_outputs, write_model
    from qonnx_bert.inputs.export import parse_static_shape
    from qonnx_bert.inputs.ingest import load_model
    from qonnx_bert.inputs.static import MAX_ABS_DIFF, static_twin

    if args.static_shape is None:
        raise UsageError(f"{args.source} is already ONNX: pass --static-shape B,T to write its fixed-shape twin")
    files = model_outputs(args.output, args.external_data)
    guard([args.source], files)
    twin = static_twin(load_model(args.source), parse_static_shape(args.static_shape), args.source)
    with atomic_outputs(*files) as temps:
        write_model(twin, args.output, temps)
    logger.info(
        "wrote %s (%d nodes), shape %s, equal to %s within %g",
        args.output,
        len(twin.graph.node),
        args.static_shape,
        args.source,
        MAX_ABS_DIFF,
    )
    return 0
