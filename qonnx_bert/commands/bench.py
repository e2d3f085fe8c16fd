"""``qonnx bench glue``: the GLUE table of many schemes, resumable, with size and latency."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_VARIANTS = "fp32,w8a32,w32a8,w8a8,peg-k6-noperm,peg-k6,peg-k3-noperm,peg-k3,peg-outlier-k6"


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (glue: the paper's GLUE table on your model)")
    p.add_argument("suite", choices=["glue"])
    p.add_argument("--model", default="minilm-l6", help="a checkpoint dir, or a name NAME whose recipes NAME-<task> exist (default minilm-l6)")
    p.add_argument("--tasks", default="rte", help="comma-separated GLUE tasks (default rte)")
    p.add_argument("--schemes", default=DEFAULT_VARIANTS, help=f"comma-separated table rows (default {DEFAULT_VARIANTS})")
    p.add_argument("--seeds", type=int, default=1, help="calibration seeds per cell; the table shows the median")
    p.add_argument("--data-dir", help="GLUE TSV directory (default: $QONNX_GLUE_DIR)")
    p.add_argument("-o", "--output", required=True, help="results directory (cells are cached here; re-running resumes)")
    p.add_argument("--limit", type=int, help="first N dev examples only")
    p.add_argument("--jobs", type=int, default=1, help="cells run in parallel processes")
    p.add_argument("--latency-runs", type=int, default=30, help="timed runs per model for the latency column (0: skip)")
    p.set_defaults(func=run)


def _model_for(model: str, task: str) -> str:
    from qonnx_bert.glue.tasks import get_task
    from qonnx_bert.models import recipe_names

    name = f"{model}-{get_task(task).name}"
    return name if name in recipe_names() else model


def _configs(args):
    from qonnx_bert.benchmark import BenchConfig
    from qonnx_bert.glue.tasks import get_task, resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    tasks = [get_task(t).name for t in args.tasks.split(",")]
    out = Path(args.output)
    return [BenchConfig(_model_for(args.model, t), t, data_dir, out / t, limit=args.limit) for t in tasks]


def _run_one(job):
    from qonnx_bert.benchmark import get_variant, run_cell

    cfg, variant, seed = job
    return run_cell(cfg, get_variant(variant), seed)


def run(args) -> int:
    from qonnx_bert.benchmark import get_variant, manifest, median_score, render_table
    from qonnx_bert.errors import UsageError
    from qonnx_bert.files import atomic_output

    if args.seeds < 1:
        raise UsageError("--seeds must be at least 1")
    variants = [get_variant(v).name for v in args.schemes.split(",")]
    configs = _configs(args)
    for cfg in configs:  # export once per task before fanning out
        _run_one((cfg, "fp32", 0))
    jobs = [(cfg, v, s) for cfg in configs for v in variants for s in range(args.seeds if v != "fp32" else 1)]
    with ProcessPoolExecutor(max_workers=args.jobs) if args.jobs > 1 else _Serial() as pool:
        records = list(pool.map(_run_one, jobs))
    scores: dict[str, dict[str, float]] = {}
    for v in variants:
        for cfg in configs:
            mine = [r for r in records if r["variant"] == v and r["task"] == cfg.task]
            scores.setdefault(v, {})[cfg.task] = median_score(mine)
    tasks = [c.task for c in configs]
    table = render_table(scores, tasks, variants)
    perf = _perf(configs[0], variants, args.latency_runs) if args.latency_runs else None
    out = Path(args.output)
    with atomic_output(out / "results.json") as tmp:
        tmp.write_text(json.dumps({"scores": scores, "perf": perf, "seeds": args.seeds, "models": {c.task: c.model for c in configs},
                                   "manifest": manifest()}, indent=1))
    with atomic_output(out / "results.md") as tmp:
        tmp.write_text(table + "\n\n" + (_perf_table(perf) if perf else "") + "\n")
    print(table)
    if perf:
        print(_perf_table(perf))
    return 0


class _Serial:
    """A pool stand-in that maps in this process (``--jobs 1``)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, items):
        return map(fn, items)


def _perf(cfg, variants: list[str], runs: int) -> dict:
    """File size and CPU latency (batch 1, T=128) of each variant's model, measured side by side."""
    import onnx

    from qonnx_bert.benchmark import model_path
    from qonnx_bert.calibration.sources import shipped_sentences
    from qonnx_bert.encode import Encoder
    from qonnx_bert.latency import full_length_feeds, median_latency_ms

    paths = {v: model_path(cfg, v) for v in variants}
    feeds = full_length_feeds(Encoder.from_model(onnx.load(str(paths["fp32"]) if "fp32" in paths else str(model_path(cfg, "fp32")))), shipped_sentences()[0])
    perf = {}
    for v, path in paths.items():
        model = onnx.load(str(path))
        bits = _bit_counts(model)
        perf[v] = {"size_mb": path.stat().st_size / 1e6, "latency_ms": median_latency_ms(model, feeds, runs=runs), **bits}
    return perf


def _bit_counts(model) -> dict:
    from qonnx_bert.quantize import report

    bits = report(model, "").activation_bits
    total = sum(bits.values())
    return {"activation_quantizers": total, "int16_fraction": (bits.get(16, 0) / total) if total else 0.0}


def _perf_table(perf: dict) -> str:
    base = perf.get("fp32", next(iter(perf.values())))
    lines = ["| model | size MB | × FP32 size | latency ms (b=1, T=128) | × FP32 latency | activation quantizers | 16-bit |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for v, p in perf.items():
        lines.append(f"| {v} | {p['size_mb']:.1f} | {p['size_mb'] / base['size_mb']:.2f} | {p['latency_ms']:.2f} | "
                     f"{p['latency_ms'] / base['latency_ms']:.2f} | {p['activation_quantizers']} | {100 * p['int16_fraction']:.0f}% |")
    return "\n".join(lines)
