"""``qonnx demo``: export, calibrate, quantize and compare the packaged MiniLM-L6."""

from __future__ import annotations

import tempfile
from pathlib import Path

from qonnx_bert.core.argtypes import positive_int


def register(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the packaged MiniLM-L6, no data needed")
    p.add_argument("--workdir", help="keep the models and ranges here (default: a temporary directory)")
    p.add_argument("--runs", type=positive_int, default=20, help="timed runs per model (default 20)")
    p.set_defaults(func=run)


def run(args) -> int:
    from qonnx_bert.benchmarks.demo import DEMO_SCHEMES, format_table, run_demo
    from qonnx_bert.core.files import guard, output_folder

    if args.workdir:
        work = Path(args.workdir)
        names = ["model.onnx", "ranges.json", *(f"model.{s}.onnx" for s in DEMO_SCHEMES)]
        guard([], [work / n for n in names], output_dirs=[work])
        with output_folder(work):
            rows = run_demo(work, runs=args.runs)
    else:
        with tempfile.TemporaryDirectory(prefix="qonnx-demo.") as tmp:
            rows = run_demo(Path(tmp), runs=args.runs)
    print(format_table(rows))
    print(
        "Logits of 64 shipped sentences; the classifier head is untrained (seeded), "
        "so agreement compares predictions, not accuracy."
    )
    return 0
