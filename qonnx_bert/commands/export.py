"""``qonnx export SOURCE -o model.onnx``: HF classifier -> ONNX, checked against PyTorch."""

from __future__ import annotations

import logging

from qonnx_bert.commands.calibrate import add_external_data_argument
from qonnx_bert.core.argtypes import positive_int

logger = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("export", help="export a BERT-style classifier to ONNX (opset 21)")
    p.add_argument(
        "source", help="minilm-l6 (packaged default), a models/ recipe name, or a local Hugging Face directory"
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
