"""``qonnx demo``: the packaged all-MiniLM-L6-v2 judged as a sentence-embedding model, FP32 vs each scheme."""

from __future__ import annotations

import tempfile
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("demo", help="FP32, W8A8, MP and PEG on the packaged MiniLM-L6: size, speed, STS-B, SQNR, HTP")
    p.add_argument("--workdir", help="keep the models and ranges here (default: a temporary directory)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per model (default 20)")
    p.add_argument("--pairs", type=int, help="score the first N shipped STS-B pairs only (default all 300)")
    p.set_defaults(func=run)


def run(args) -> int:
    from qonnx_bert.benchmarks.demo import conclusion, format_table, run_demo

    if args.workdir:
        result = run_demo(Path(args.workdir), runs=args.runs, pairs=args.pairs)
    else:
        with tempfile.TemporaryDirectory(prefix="qonnx-demo.") as tmp:
            result = run_demo(Path(tmp), runs=args.runs, pairs=args.pairs)
    print(format_table(result))
    print()
    print(conclusion(result))
    print(f"STS-B: {result.pairs} shipped dev pairs (CC BY-SA 4.0), zero-shot cosine Spearman x100, standard error ~1.5")
    kept = f"models and ranges in {result.workdir}" if args.workdir else "nothing (temporary folder; --workdir keeps it)"
    print(f"wrote {kept}")
    return 0
