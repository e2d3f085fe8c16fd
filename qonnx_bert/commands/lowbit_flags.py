"""``--weight-bits`` / ``--embedding-bits`` and friends: one definition for every command that writes weights."""

from __future__ import annotations

from qonnx_bert.calibration.adaround import AdaRoundConfig
from qonnx_bert.calibration.weight_grid import BITS, Granularity, WeightGrid
from qonnx_bert.quantize.lowbit import LowBitConfig

_GRANULARITY = [g.value for g in Granularity]


def add_lowbit_arguments(p) -> None:
    g = p.add_argument_group("low-bit weights (the paper's Tables 7 and 12)")
    g.add_argument(
        "--weight-bits", type=int, choices=BITS, help="bits of MatMul/Gemm weights (default: the scheme's 8)"
    )
    g.add_argument("--weight-granularity", choices=_GRANULARITY, default="per-channel", help="(default per-channel)")
    g.add_argument("--embedding-bits", type=int, choices=BITS, help="bits of the word embedding table")
    g.add_argument(
        "--embedding-granularity", choices=_GRANULARITY, default="per-channel", help="per-channel = per row (default)"
    )
    g.add_argument("--block-size", type=int, default=32, help="elements per scale for 'block' (default 32)")
    g.add_argument(
        "--adaround", type=int, metavar="ITERATIONS", help="learned rounding for <= 4-bit weights (e.g. 1000)"
    )


def lowbit_config(args) -> LowBitConfig:
    def grid(bits, granularity):
        return None if bits is None else WeightGrid(bits, Granularity(granularity), args.block_size)

    return LowBitConfig(
        grid(args.weight_bits, args.weight_granularity),
        grid(args.embedding_bits, args.embedding_granularity),
        AdaRoundConfig(iterations=args.adaround) if args.adaround else None,
    )
