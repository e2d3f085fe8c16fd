"""``qonnx quantize model.onnx --scheme w8a8 --ranges ranges.json -o model.w8a8.onnx``."""

from __future__ import annotations

import argparse
import logging

from qonnx_bert.core.errors import UsageError

logger = logging.getLogger(__name__)


def register(sub) -> None:
    from qonnx_bert.quantize.schemes import SCHEMES

    p = sub.add_parser("quantize", help="insert QuantizeLinear/DequantizeLinear by scheme")
    p.add_argument("model", help="FP32 .onnx written by `qonnx export`")
    p.add_argument("-o", "--output", required=True, help="QDQ .onnx to write (never the input)")
    p.add_argument("--scheme", default="w8a8", choices=sorted(SCHEMES), help="quantization scheme (default w8a8)")
    p.add_argument("--ranges", help="ranges JSON from `qonnx calibrate` (needed when activations are quantized)")
    add_int16_arguments(p)
    add_peg_arguments(p)
    p.set_defaults(func=run)


def layer_list(text: str) -> list[int]:
    """``--layers``: ``0,2,4-5``."""
    try:
        return [i for part in text.split(",") for i in _span(part.strip())]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a layer list such as 0,2,4-5") from None


def _span(part: str) -> range:
    first, _, last = part.partition("-")
    return range(int(first), int(last or first) + 1)


PEG_OPTIONS = ("groups", "no_permute", "grouping", "layers", "permutation", "target", "intermediate_groups")


def add_peg_arguments(p) -> None:
    g = p.add_argument_group("per-embedding-group quantization (--scheme peg / peg-equal)")
    g.add_argument("--groups", type=int, metavar="K", help="groups of embedding dimensions per layer (default 6)")
    g.add_argument(
        "--grouping",
        choices=("equal", "outlier"),
        help="equal-size groups (the paper; peg-equal's default) or outlier-aware uneven groups (peg's default)",
    )
    g.add_argument(
        "--no-permute",
        action="store_true",
        default=None,
        help="equal groups of consecutive dimensions, no range-based permutation",
    )
    g.add_argument(
        "--permutation",
        choices=("layer", "model"),
        help="layer: a Gather before and after each FFN (the paper); model: one order for all layers, folded into the weights (no Gather at run time)",
    )
    g.add_argument("--layers", type=layer_list, help="layers to apply PEG to, e.g. 0,2,4-5 (default all)")
    g.add_argument(
        "--intermediate-groups",
        type=int,
        metavar="J",
        help="split each FFN's GELU output into J outlier-aware groups of units where that cuts its quantization noise 8-fold (a unit far wider than the rest); peg's default 2, peg-equal's 1 (not split)",
    )
    g.add_argument(
        "--target",
        choices=("portable", "cpu"),
        help="portable (default): runs on every provider, QNN HTP included; cpu: faster on the CPU provider only, where the LayerNorms around the groups run in float anyway",
    )


def peg_options(args) -> dict:
    given = {n: getattr(args, n) for n in PEG_OPTIONS if getattr(args, n) is not None}
    if given and not args.scheme.startswith("peg"):
        flag = "--" + next(iter(given)).replace("_", "-")
        raise UsageError(f"{flag} applies to --scheme peg or peg-equal, not {args.scheme}")
    return given


def budget(text: str) -> int | float:
    """``--budget``: a count of activations (``6``) or a fraction of all of them (``0.2``)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a count (6) nor a fraction (0.2)") from None


def add_int16_arguments(p) -> None:
    g = p.add_argument_group("16-bit activations (any scheme; see --scheme mp / auto-mp)")
    g.add_argument(
        "--int16",
        action="append",
        metavar="PATTERN",
        help="keep the roles matching PATTERN in uint16, e.g. 'layer.*.ffn.residual_sum', 'layer.4-5.ffn.*', 'output' (repeatable)",
    )
    g.add_argument(
        "--int16-from", metavar="FILE", help="keep the roles of a selection saved with --save-selection in uint16"
    )
    g.add_argument(
        "--budget",
        type=budget,
        help="auto-mp: how many activations (by role) go to 16 bits: a count (6) or a fraction of all (0.2)",
    )
    g.add_argument(
        "--save-selection", metavar="FILE", help="write the 16-bit roles (and auto-mp's measurements) for --int16-from"
    )


def int16_options(args) -> dict:
    names = ("int16", "int16_from", "budget", "save_selection")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def run(args) -> int:
    import onnx

    from qonnx_bert.calibration.ranges import RangeTable
    from qonnx_bert.core.files import atomic_output
    from qonnx_bert.core.modelinfo import load_onnx
    from qonnx_bert.quantize.api import quantize

    options = {**int16_options(args), **peg_options(args)}
    model = load_onnx(args.model)
    ranges = RangeTable.load(args.ranges) if args.ranges else None
    with atomic_output(args.output, inputs=(args.model,)) as tmp:
        quantized, report = quantize(model, args.scheme, ranges, path=args.model, **options)
        onnx.save(quantized, str(tmp))
    for line in report.lines():
        logger.info(line)
    logger.info("wrote %s", args.output)
    return 0
