"""``qonnx demo``: the packaged all-MiniLM-L6-v2 judged as a sentence-embedding model, FP32 vs each scheme."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

from qonnx_bert.core.argtypes import positive_int


def register(sub) -> None:
    p = sub.add_parser("demo", help="FP32, W8A8, MP and PEG on the packaged MiniLM-L6: size, speed, STS-B, SQNR, HTP")
    p.add_argument("--workdir", help="keep the models and ranges here (default: a temporary directory)")
    p.add_argument("--runs", type=positive_int, default=10, help="timed runs per model (default 10)")
    p.add_argument("--pairs", type=positive_int, help="score the first N shipped STS-B pairs only (default all 300)")
    p.add_argument(
        "--htp",
        choices=("peg", "all", "none"),
        default="peg",
        help="schemes to pass through the strict QNN HTP check (needs onnxruntime-qnn; default peg)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from qonnx_bert.benchmarks.demo import conclusion, format_table

    if args.workdir:
        from qonnx_bert.benchmarks.demo import DEMO_SCHEMES
        from qonnx_bert.core.files import guard, output_folder

        work = Path(args.workdir)
        names = ["model.onnx", "model.1x128.onnx", "ranges.json", *(f"model.{s.file}.onnx" for s in DEMO_SCHEMES)]
        guard([], [work / n for n in names], output_dirs=[work])
        with output_folder(work):
            result = _run(work, args)
    else:
        with tempfile.TemporaryDirectory(prefix="qonnx-demo.") as tmp:
            result = _run(Path(tmp), args)
    print(format_table(result))
    print()
    print(conclusion(result))
    print(
        f"STS-B: {result.pairs} shipped dev pairs (CC BY-SA 4.0), zero-shot cosine Spearman x100 (standard error "
        "~1.5 at 300 pairs). HTP: the strict check (sm8650, emulated on x86) of the scheme's 1x128 twin."
    )
    kept = (
        f"models and ranges in {result.workdir}" if args.workdir else "nothing (temporary folder; --workdir keeps it)"
    )
    print(f"wrote {kept}")
    return 0


def _run(workdir: Path, args):
    """The demo, with the HTP column filled when onnxruntime-qnn is installed ("not checked" otherwise)."""
    from qonnx_bert.benchmarks.demo import DEMO_SCHEMES, run_demo

    labels: tuple[str, ...] = ()
    if args.htp != "none" and importlib.util.find_spec("onnxruntime_qnn") is not None:
        labels = tuple(s.label for s in DEMO_SCHEMES) if args.htp == "all" else ("PEG",)
    return run_demo(workdir, runs=args.runs, pairs=args.pairs, htp_labels=labels)
