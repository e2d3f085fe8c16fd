"""``qonnx bench glue``: the GLUE table of many schemes, resumable, with size and latency.

Cells run in this process (``--jobs 1``), in a process pool (``--jobs N``), or as
Ray tasks (``--ray [ADDRESS]``). Each cell stores its result under the output
directory as it finishes, so an interrupted run resumes. With Ray on several
machines the output directory should be on a shared filesystem (otherwise each
node exports and calibrates on its own; the results still come back here).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from qonnx_bert.core.argtypes import non_negative_int, positive_int
from qonnx_bert.core.workers import WorkerPool

logger = logging.getLogger(__name__)

DEFAULT_VARIANTS = "fp32,w8a32,w32a8,w8a8,mp,auto-mp,peg-k6-noperm,peg-k6,peg-k3-noperm,peg-k3,peg-outlier-k6"


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (glue: the paper's GLUE table on your model)")
    p.add_argument("suite", choices=["glue"])
    p.add_argument(
        "--model",
        default="minilm-l6",
        help="a checkpoint dir, or a name NAME whose recipes NAME-<task> exist (default minilm-l6)",
    )
    p.add_argument("--tasks", default="rte", help="comma-separated GLUE tasks (default rte)")
    p.add_argument(
        "--schemes",
        default=DEFAULT_VARIANTS,
        help="comma-separated table rows; 'loo' adds the leave-one-out rows (Table 2), "
        f"'table5' the PEG K/permutation rows (default {DEFAULT_VARIANTS})",
    )
    p.add_argument(
        "--seeds", type=positive_int, default=1, help="calibration seeds per cell; the table shows the median"
    )
    p.add_argument("--data-dir", help="GLUE TSV directory (default: $QONNX_GLUE_DIR)")
    p.add_argument(
        "-o", "--output", required=True, help="results directory (cells are cached here; re-running resumes)"
    )
    p.add_argument("--limit", type=positive_int, help="first N dev examples only")
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="cells run in parallel processes (with --ray on a new local instance: its CPUs)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run cells as Ray tasks: on a new local Ray instance (no ADDRESS) or on a cluster "
        "('auto', 'ray://HOST:10001'); pip install 'qonnx-bert[ray]'",
    )
    p.add_argument("--latency-runs", type=non_negative_int, default=200, help="timed runs per model (0: skip)")
    p.set_defaults(func=run)


def _model_for(model: str, task: str) -> str:
    from qonnx_bert.inputs.glue.tasks import get_task
    from qonnx_bert.inputs.models import recipe_names

    name = f"{model}-{get_task(task).name}"
    return name if name in recipe_names() else model


def _configs(args):
    from qonnx_bert.benchmarks.glue_bench import BenchConfig
    from qonnx_bert.inputs.glue.tasks import get_task, resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    tasks = [get_task(t).name for t in args.tasks.split(",")]
    out = Path(args.output)
    return [BenchConfig(_model_for(args.model, t), t, data_dir, out / t, limit=args.limit) for t in tasks]


def _run_one(job) -> dict:
    from qonnx_bert.benchmarks.glue_bench import get_variant, run_cell

    cfg, variant, seed = job
    return run_cell(cfg, get_variant(variant), seed)


def _calibrate_one(job) -> str:
    from qonnx_bert.benchmarks.glue_bench import ranges_for

    cfg, seed = job
    ranges_for(cfg, seed)
    return f"{cfg.task} seed {seed}"


def _command(args) -> str:
    parts = [
        "qonnx bench glue",
        f"--model {args.model}",
        f"--tasks {args.tasks}",
        f"--schemes {args.schemes}",
        f"--seeds {args.seeds}",
    ]
    parts += [f"--limit {args.limit}"] if args.limit else []
    return " ".join(parts + ["--data-dir GLUE_DIR", f"-o {args.output}"])


def run(args) -> int:
    from qonnx_bert.benchmarks.glue_bench import VARIANTS, expand_variants, prepare_task, render_results, save_record
    from qonnx_bert.core.files import atomic_outputs, guard, output_folder

    out = Path(args.output)
    guard(
        [args.model if Path(args.model).exists() else None],
        [out / "results.json", out / "results.md"],
        output_dirs=[out],
    )
    variants = expand_variants(args.schemes.split(","))
    configs = _configs(args)
    by_task = {cfg.task: cfg for cfg in configs}
    seeds = {v: range(args.seeds if VARIANTS[v].scheme is not None else 1) for v in variants}
    jobs = [(cfg, v, s) for cfg in configs for v in variants for s in seeds[v]]
    calibrations = (
        [(cfg, s) for cfg in configs for s in range(args.seeds)] if any(VARIANTS[v].scheme for v in variants) else []
    )
    records = []
    with output_folder(out), _executor(args) as pool:  # a missing Ray fails before any work
        for cfg in configs:  # refuse another run's cells and export once per task, here, before fanning out
            prepare_task(cfg)
        for done in pool.map(_calibrate_one, calibrations):
            logger.debug("calibrated %s", done)
        for record in pool.map(_run_one, jobs):
            save_record(by_task[record["task"]], record)  # a no-op unless a remote node wrote it elsewhere
            records.append(record)
    results = _results(args, configs, variants, records)
    page = render_results(results)
    with atomic_outputs(out / "results.json", out / "results.md") as (json_tmp, md_tmp):
        json_tmp.write_text(json.dumps(results, indent=1))
        md_tmp.write_text(f"# GLUE benchmark: {args.model}\n\n" + page)
    print(page)
    return 0


def _results(args, configs, variants: list[str], records: list[dict]) -> dict:
    """What ``results.json`` holds: median scores (and each seed's), size/latency, the command and manifest."""
    from qonnx_bert.benchmarks.glue_bench import LEAVE_ONE_OUT, VARIANTS, manifest, median_score

    tasks = [c.task for c in configs]
    mine = {(v, t): [r for r in records if r["variant"] == v and r["task"] == t] for v in variants for t in tasks}
    deployable = [v for v in variants if VARIANTS[v].section != LEAVE_ONE_OUT]  # leave-one-out rows are analysis only
    return {
        "command": _command(args),
        "tasks": tasks,
        "variants": variants,
        "scores": {v: {t: median_score(mine[v, t]) for t in tasks} for v in variants},
        "seed_scores": {v: {t: [r["metrics"]["score"] for r in mine[v, t]] for t in tasks} for v in variants},
        "perf": _perf(configs[0], deployable, args.latency_runs) if args.latency_runs else None,
        "perf_task": configs[0].task,
        "seeds": args.seeds,
        "models": {c.task: c.model for c in configs},
        "manifest": manifest(),
    }


def _executor(args):
    if args.ray:
        return _RayPool(None if args.ray == "local" else args.ray, args.jobs if args.jobs > 1 else None)
    return WorkerPool(args.jobs) if args.jobs > 1 else _Serial()


class _Serial:
    """A pool stand-in that maps in this process (``--jobs 1``)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, items):
        return map(fn, items)


class _RayPool:
    """Cells as Ray tasks; results come back as they finish (a failed task raises after the others are kept).

    ``address`` None starts a local Ray instance (stopped again on exit); otherwise
    it joins a running cluster (``ray.init(address=...)``).
    """

    def __init__(self, address: str | None, num_cpus: int | None):
        self.address, self.num_cpus, self.started = address, num_cpus, False

    def __enter__(self):
        from qonnx_bert.core.errors import UsageError

        try:
            import ray
        except ImportError:
            raise UsageError("--ray needs Ray: pip install 'qonnx-bert[ray]'") from None
        if not ray.is_initialized():
            if self.address is None:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=self.address, log_to_driver=False)
            self.started = True
        self.ray = ray
        return self

    def __exit__(self, *exc):
        if self.started:
            self.ray.shutdown()
        return False

    def map(self, fn: Callable, items: Iterable) -> Iterator:
        remote = self.ray.remote(fn)
        pending = [remote.remote(item) for item in items]
        failure = None
        try:
            while pending:
                done, pending = self.ray.wait(pending, num_returns=1)
                try:
                    yield self.ray.get(done[0])
                except Exception as err:  # keep collecting finished cells; raise the first failure at the end
                    failure = failure or err
        finally:  # interrupted (Ctrl-C, SIGTERM): a cluster would otherwise run the remaining cells on
            for ref in pending:
                self.ray.cancel(ref, force=True)
        if failure is not None:
            raise failure


def _perf(cfg, variants: list[str], runs: int) -> dict:
    """File size and CPU latency (batch 1, T=128) of each variant's model, timed in interleaved rounds."""
    import onnx

    from qonnx_bert.benchmarks.glue_bench import fp32_path, seed0_model
    from qonnx_bert.benchmarks.latency import full_length_feeds, side_by_side_latency_ms
    from qonnx_bert.inputs.encode import Encoder
    from qonnx_bert.inputs.sequences import shipped_sentences

    paths = {v: seed0_model(cfg, v) for v in variants}  # all built before any is timed
    feeds = full_length_feeds(Encoder.from_model(onnx.load(str(fp32_path(cfg)))), shipped_sentences()[0])
    models = {v: onnx.load(str(path)) for v, path in paths.items()}
    latency = side_by_side_latency_ms(models, feeds, runs=runs)
    return {
        v: {"size_mb": path.stat().st_size / 1e6, "latency_ms": latency[v], **_bit_counts(models[v])}
        for v, path in paths.items()
    }


def _bit_counts(model) -> dict:
    from qonnx_bert.quantize.api import quant_report

    bits = quant_report(model, "").activation_bits
    total = sum(bits.values())
    return {"activation_quantizers": total, "int16_fraction": (bits.get(16, 0) / total) if total else 0.0}
