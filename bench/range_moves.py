"""How far QAT moved its activation ranges: each tensor's bounds in a learned ranges file against the PTQ file.

    python bench/range_moves.py bench/results/lowbit-minilm-l6-qat-rte/work/rte/ranges.json \
        "bench/results/lowbit-minilm-l6-qat-rte/work/rte/qat-W8A8_QAT_(per-tensor)-s0/ranges.json" \
        --out bench/results/lowbit-minilm-l6-qat-rte/range-moves-w8a8.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from qonnx_bert.calibration.ranges import RangeTable
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.files import atomic_output, guard


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("initial", type=Path, help="the PTQ ranges QAT started from")
    p.add_argument("learned", type=Path, help="the ranges.json a QAT run wrote")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:  # both files are read: --out must be neither
        guard([args.initial, args.learned], [args.out])
        initial, learned = RangeTable.load(args.initial), RangeTable.load(args.learned)
    except UsageError as err:
        p.error(str(err))
    moves = []  # (largest bound move, that move relative to the PTQ range's span)
    for tensor in learned.tensors.keys() & initial.tensors.keys():
        (lo0, hi0), (lo1, hi1) = initial.range(tensor), learned.range(tensor)
        move = max(abs(lo1 - lo0), abs(hi1 - hi0))
        moves.append((move, move / (hi0 - lo0)))
    lines = [
        "# How far QAT moved its activation ranges",
        "",
        f"`python bench/range_moves.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        "| tensors | largest bound move | largest move / PTQ span | median move / PTQ span |",
        "|---:|---:|---:|---:|",
        f"| {len(moves)} | {max(m for m, _ in moves):.3g} | {max(r for _, r in moves):.3g} "
        f"| {statistics.median(r for _, r in moves):.3g} |",
    ]
    with atomic_output(args.out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print(lines[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
