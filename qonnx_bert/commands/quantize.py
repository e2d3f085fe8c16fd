"""``qonnx quantize model.onnx --scheme w8a8 --ranges ranges.json -o model.w8a8.onnx``."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def register(sub) -> None:
    from qonnx_bert.schemes import SCHEMES

    p = sub.add_parser("quantize", help="insert QuantizeLinear/DequantizeLinear by scheme")
    p.add_argument("model", help="FP32 .onnx written by `qonnx export`")
    p.add_argument("-o", "--output", required=True, help="QDQ .onnx to write (never the input)")
    p.add_argument("--scheme", default="w8a8", choices=sorted(SCHEMES), help="quantization scheme (default w8a8)")
    p.add_argument("--ranges", help="ranges JSON from `qonnx calibrate` (needed when activations are quantized)")
    p.set_defaults(func=run)


def run(args) -> int:
    import onnx

    from qonnx_bert.calibration.ranges import RangeTable
    from qonnx_bert.files import atomic_output
    from qonnx_bert.modelinfo import load_onnx
    from qonnx_bert.quantize import quantize

    model = load_onnx(args.model)
    ranges = RangeTable.load(args.ranges) if args.ranges else None
    with atomic_output(args.output, inputs=(args.model,)) as tmp:
        quantized, report = quantize(model, args.scheme, ranges, path=args.model)
        onnx.save(quantized, str(tmp))
    for line in report.lines():
        logger.info(line)
    logger.info("wrote %s", args.output)
    return 0
