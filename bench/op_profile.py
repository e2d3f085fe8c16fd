"""Where a QDQ model's CPU time goes: ONNX Runtime's per-node profile, summed by op type.

    .venv/bin/python bench/op_profile.py                      # the RTE models of bench/run_glue.sh
    .venv/bin/python bench/op_profile.py --dir bench/work/cpu-peers/rte --models ort-dynamic qonnx-w8a8-cpu \
        --out bench/results/op-profile-cpu-peers-rte.md        # against ORT's own CPU recipe

Each model runs ``--runs`` times at batch 1, 128 tokens (the latency table's feed) with
``enable_profiling``; kernel times are summed per op type and divided by the run count. The
last row is the wall time of a whole ``session.run`` (ORT's own ``model_run`` event): what it
exceeds the kernels by is ORT's per-node work between kernels (allocation, dispatch).
Writes ``bench/results/op-profile-rte.md``.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import onnx
import onnxruntime as ort

from qonnx_bert.benchmarks.latency import full_length_feeds
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.files import atomic_output, guard
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.sequences import shipped_sentences

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "bench" / "results" / "glue-minilm-l6" / "rte" / "models"
WARMUP = 5


def profile(path: Path, feeds: dict, runs: int, tmp: Path) -> tuple[dict[str, float], dict[str, int], float]:
    """ms per run and node count per op type; wall ms per run. The first ``WARMUP`` runs (weight
    prepacking, first allocations) are run but not counted."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp / path.stem)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(WARMUP + runs):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    counted = [e for e in events if e["ts"] >= starts[WARMUP]]
    total, count, wall = collections.Counter(), collections.Counter(), 0.0
    for e in counted:
        if e.get("cat") == "Session" and e["name"] == "model_run":
            wall += e["dur"] / 1000 / runs
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total[e["args"]["op_name"]] += e["dur"] / 1000 / runs
            count[e["args"]["op_name"]] += 1
    return dict(total), {op: n // runs for op, n in count.items()}, wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models",
        nargs="+",
        default=[
            "w8a8",
            "peg-outlier-k2-folded-cpu",
            "peg-outlier-k2-folded-gelu-cpu",
            "peg-outlier-k2-folded",
            "peg-outlier-k6-folded-cpu",
            "peg-outlier-k6-folded",
            "peg-outlier-k6-folded-gelu",
        ],
    )
    p.add_argument("--dir", type=Path, default=MODELS, help="folder of the models (MODEL.onnx)")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "op-profile-rte.md")
    args = p.parse_args()
    paths = {m: args.dir / f"{m}.onnx" for m in args.models}
    try:  # the profiled models are read: --out must be none of them
        guard(list(paths.values()), [args.out])
    except UsageError as err:
        p.error(str(err))
    feeds = full_length_feeds(Encoder.from_model(onnx.load(str(paths[args.models[0]]))), shipped_sentences()[0])
    tmp = args.out.parent / ".profiles"
    tmp.mkdir(exist_ok=True)
    results = {m: profile(paths[m], feeds, args.runs, tmp) for m in args.models}
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    ops = sorted(
        {op for t, *_ in results.values() for op in t}, key=lambda op: -max(r[0].get(op, 0) for r in results.values())
    )
    lines = [
        f"# Kernel time per op type ({args.dir}, CPU provider, b=1, T=128)",
        "",
        f"ms per run, summed over nodes, mean of {args.runs} runs after {WARMUP} uncounted; nodes in brackets.",
        "",
        f"`python bench/op_profile.py {' '.join(sys.argv[1:])}`",
        "",
        "| op | " + " | ".join(args.models) + " |",
        "|---|" + "---:|" * len(args.models),
    ]
    for op in ops:
        lines.append(
            f"| {op} | "
            + " | ".join(f"{results[m][0].get(op, 0):.2f} ({results[m][1].get(op, 0)})" for m in args.models)
            + " |"
        )
    lines.append(
        "| **all kernels** | " + " | ".join(f"**{sum(results[m][0].values()):.2f}**" for m in args.models) + " |"
    )
    lines.append("| **wall (session.run)** | " + " | ".join(f"**{results[m][2]:.2f}**" for m in args.models) + " |")
    with atomic_output(args.out) as tmp_out:
        tmp_out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
