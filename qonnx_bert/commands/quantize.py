"""``qonnx quantize model.onnx --scheme w8a8 --ranges ranges.json -o model.w8a8.onnx``.

Flags become one typed scheme config (``quantize/config.py``); ``--config FILE`` replays a
config saved with ``--save-config``. Config problems come back naming fields; this module
words them as the flags a user typed.
"""

from __future__ import annotations

import argparse
import json
import logging

from qonnx_bert.commands.calibrate import add_external_data_argument, add_tokenizer_argument
from qonnx_bert.commands.lowbit_flags import LOWBIT_FIELDS, add_lowbit_arguments, check_block_size
from qonnx_bert.core.errors import UsageError

logger = logging.getLogger(__name__)

# Flags that set a config field (dest == field name); any scheme's config may take them.
CONFIG_FLAGS = (
    "groups",
    "grouping",
    "permutation",
    "layers",
    "intermediate_groups",
    "target",
    "budget",
    "alpha",
    "int16",
    "int16_from",
    *LOWBIT_FIELDS,
)


def register(sub) -> None:
    from qonnx_bert.quantize.config import Grouping, Permutation, Target
    from qonnx_bert.quantize.schemes import scheme_names

    p = sub.add_parser("quantize", help="insert QuantizeLinear/DequantizeLinear by scheme")
    p.add_argument("model", help="FP32 .onnx: `qonnx export`'s, TorchScript's (opset 14+) or ORT-optimized")
    p.add_argument("-o", "--output", required=True, help="QDQ .onnx to write (never the input)")
    p.add_argument("--scheme", choices=scheme_names(), help="quantization scheme (default w8a8)")
    p.add_argument("--ranges", help="ranges JSON from `qonnx calibrate` (needed when activations are quantized)")
    add_tokenizer_argument(p)
    add_external_data_argument(p)
    p.add_argument("--config", metavar="FILE", help="replay a scheme config saved with --save-config (no scheme flags)")
    p.add_argument("--save-config", metavar="FILE", help="write the scheme config of this run as JSON, for --config")
    g = p.add_argument_group("16-bit activations (any scheme; see --scheme mp / auto-mp)")
    g.add_argument(
        "--int16",
        action="append",
        metavar="PATTERN",
        help="keep the roles matching PATTERN in uint16, e.g. 'layer.*.ffn.residual_sum', "
        "'layer.4-5.ffn.*', 'output' (repeatable)",
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
    g = p.add_argument_group("per-embedding-group quantization (--scheme peg / peg-equal)")
    g.add_argument("--groups", type=int, metavar="K", help="groups of embedding dimensions per layer (default 6)")
    g.add_argument(
        "--grouping",
        choices=[e.value for e in Grouping],
        help="equal-size groups (the paper; peg-equal's default) or outlier-aware uneven groups (peg's default)",
    )
    g.add_argument(
        "--permutation",
        choices=[e.value for e in Permutation],
        help="none: groups of consecutive dimensions; layer: a Gather before and after each FFN (the paper, "
        "peg-equal's default); model: one order for all layers folded into the weights (peg's default)",
    )
    g.add_argument("--layers", type=layer_list, help="layers to apply PEG to, e.g. 0,2,4-5 (default all)")
    g.add_argument(
        "--intermediate-groups",
        type=int,
        metavar="J",
        help="split each FFN's GELU output into J outlier-aware groups of units where that cuts its "
        "quantization noise 8-fold; peg's default 2, peg-equal's 1 (not split)",
    )
    g.add_argument(
        "--target",
        choices=[e.value for e in Target],
        help="portable (default; smoothquant: cpu only): every provider, QNN HTP included; cpu: faster on the CPU "
        "provider only",
    )
    g = p.add_argument_group("outlier migration (--scheme smoothquant)")
    g.add_argument(
        "--alpha",
        type=alpha,
        help="share of each MatMul input channel's range moved into its weights, 0 to 1 (default 0.75), or auto: "
        "the value (0.3 to 0.9) whose output is closest to FP32 on the calibration sequences",
    )
    add_lowbit_arguments(p)
    p.set_defaults(func=run)


def layer_list(text: str) -> list[int]:
    """``--layers``: ``0,2,4-5`` (a span runs upward)."""
    try:
        layers = [i for part in text.split(",") for i in _span(part.strip())]
    except ValueError:
        layers = []
    if not layers:
        raise argparse.ArgumentTypeError(f"{text!r} is not a layer list such as 0,2,4-5 (spans run upward)")
    twice = sorted({i for i in layers if layers.count(i) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"{text!r} names layer {', '.join(map(str, twice))} more than once")
    return layers


def _span(part: str) -> range:
    first, dash, last = part.partition("-")
    if dash and not last:  # "1-" would read as "1 onward"; spans are closed
        raise ValueError(part)
    span = range(int(first), int(last or first) + 1)
    if not span or span.start < 0:
        raise ValueError(part)
    return span


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


def alpha(text: str) -> float | str:
    """``--alpha``: a number (checked by the config) or ``auto``."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number in [0, 1] (0.75) nor auto") from None


def config_error_as_flags(err, where: str = "") -> UsageError:
    """A ``ConfigError`` worded with the flags that set each field."""
    problems = "; ".join(f"--{name.replace('_', '-')} {why}" for name, why in err.problems)
    return UsageError(f"{where}{err.scheme}: {problems}" if err.scheme else f"{where}{problems}")


def scheme_config(args):
    """The typed config from ``--config FILE`` or from ``--scheme`` and its flags."""
    from qonnx_bert.core.files import read_json_object
    from qonnx_bert.quantize.config import ConfigError
    from qonnx_bert.quantize.schemes import config_for, config_from_dict

    given = {name: getattr(args, name) for name in CONFIG_FLAGS if getattr(args, name) is not None}
    check_block_size(given)
    if args.config:
        if given or args.scheme:
            flags = ", ".join(f"--{n.replace('_', '-')}" for n in (["scheme"] if args.scheme else []) + list(given))
            raise UsageError(f"--config replays a saved scheme config; drop {flags} or drop --config")
        data = read_json_object(args.config, "scheme config", "write one with `qonnx quantize --save-config FILE`")
        try:
            return config_from_dict(data)
        except ConfigError as err:
            raise config_error_as_flags(err, f"{args.config}: ") from None
    try:
        return config_for(args.scheme or "w8a8", **given)
    except ConfigError as err:
        raise config_error_as_flags(err) from None


def run(args) -> int:

    from qonnx_bert.calibration.ranges import RangeTable
    from qonnx_bert.core.files import atomic_outputs, guard, model_outputs, write_model
    from qonnx_bert.inputs.ingest import load_model
    from qonnx_bert.quantize.api import quantize
    from qonnx_bert.quantize.config import ConfigError
    from qonnx_bert.quantize.schemes.mixed import save_selection

    config = scheme_config(args)
    files = model_outputs(args.output, args.external_data)  # the .onnx, and its .data with --external-data
    sides = [p for p in (args.save_selection, args.save_config) if p]
    guard([args.model, args.tokenizer, args.ranges, args.config, config.int16_from], [*files, *sides])
    ranges = RangeTable.load(args.ranges) if args.ranges else None
    try:  # the loaded model is given up to quantize (no reference kept here): it frees it once planned
        quantized, report = quantize(
            load_model(args.model, args.tokenizer), config, ranges, path=args.model, consume=True
        )
    except ConfigError as err:  # a value that does not fit this model
        raise config_error_as_flags(err) from None
    chosen = report.selection and (report.selection["roles"] or report.selection["sensitivity"])
    if args.save_selection and not chosen:
        raise UsageError(f"--save-selection: scheme {config.scheme} chose no 16-bit roles to save")
    with atomic_outputs(*files, *sides) as temps:  # the model and its side files appear together
        write_model(quantized, args.output, temps[: len(files)])
        side = list(temps[len(files) :])
        if args.save_selection:
            save_selection(side.pop(0), report.model, config.scheme, report.selection)
        if args.save_config:
            side.pop(0).write_text(json.dumps(config.to_dict(), indent=1) + "\n")
    for line in report.lines():
        logger.info(line)
    logger.info("wrote %s", args.output)
    return 0
