"""``--weight-bits`` / ``--embedding-bits`` and friends: one definition for every command that writes weights.

Each flag's dest is the scheme config field it sets (``quantize/config.py``); unset flags
stay None so the config's defaults apply.
"""

from __future__ import annotations

from qonnx_bert.calibration.weight_grid import BITS, Granularity
from qonnx_bert.core.errors import UsageError
from qonnx_bert.quantize.lowbit import LowBitConfig, lowbit_config

LOWBIT_FIELDS = (
    "weight_bits",
    "weight_granularity",
    "embedding_bits",
    "embedding_granularity",
    "block_size",
    "adaround",
)
_GRANULARITY = [g.value for g in Granularity]


def add_lowbit_arguments(p) -> None:
    g = p.add_argument_group("low-bit weights (the paper's Tables 7 and 12)")
    g.add_argument("--weight-bits", type=int, choices=BITS, help="bits of MatMul/Gemm weights (default: int8)")
    g.add_argument("--weight-granularity", choices=_GRANULARITY, help="(default per-channel)")
    g.add_argument("--embedding-bits", type=int, choices=BITS, help="bits of the word embedding table (default: 8)")
    g.add_argument("--embedding-granularity", choices=_GRANULARITY, help="per-channel = per row (default)")
    g.add_argument("--block-size", type=int, help="elements per scale for 'block' (default 32)")
    g.add_argument(
        "--adaround", type=int, metavar="ITERATIONS", help="learned rounding for <= 4-bit weights (e.g. 1000)"
    )


def check_block_size(given: dict) -> None:
    """``--block-size`` alone would be ignored (its config field has a default): refuse it."""
    granularities = (given.get("weight_granularity"), given.get("embedding_granularity"))
    if "block_size" in given and Granularity.BLOCK.value not in granularities:
        raise UsageError(
            "--block-size sets the blocks of --weight-granularity block (or --embedding-granularity block)"
        )


def given_lowbit(args) -> dict:
    given = {name: getattr(args, name) for name in LOWBIT_FIELDS if getattr(args, name) is not None}
    check_block_size(given)
    return given


def lowbit_from_args(args) -> LowBitConfig:
    values = given_lowbit(args)
    for name in ("weight_granularity", "embedding_granularity"):
        if name in values:
            values[name] = Granularity(values[name])
    return lowbit_config(**values)
