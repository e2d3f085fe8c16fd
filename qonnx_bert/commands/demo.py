"""``qonnx demo``: export, calibrate, quantize and compare the packaged MiniLM-L6."""

from __future__ import annotations

import tempfile
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the packaged MiniLM-L6, no data needed")
    p.add_argument("--workdir", help="keep the models and ranges here (default: a temporary directory)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per model (default 20)")
    p.set_defaults(func=run)


def run(args) -> int:
    from qonnx_bert.benchmarks.demo import format_table, run_demo

    if args.workdir:
        rows = run_demo(Path(args.workdir), runs=args.runs)
    else:
        with tempfile.TemporaryDirectory(prefix="qonnx-demo.") as tmp:
            rows = run_demo(Path(tmp), runs=args.runs)
    print(format_table(rows))
    print(
        "Logits of 64 shipped sentences; the classifier head is untrained (seeded), so agreement compares predictions, not accuracy."
    )
    return 0
