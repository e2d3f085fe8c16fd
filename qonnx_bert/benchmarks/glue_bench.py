"""GLUE benchmark: export -> calibrate -> quantize -> evaluate, one resumable cell at a time.

A cell is (task, variant, seed). Its result is a JSON file under the output
directory, written atomically when the cell finishes, so a crashed or killed run
resumes where it stopped and loses nothing. Intermediate models and ranges are
cached beside the results. Variants name a scheme plus its options, so the
paper's table rows (W8A8, MP, PEG with K and permutation, the leave-one-out
analysis) are data, not code. ``render_results`` turns a run's ``results.json``
into the Markdown page: the paper's Table 6 layout, Table 2 (leave-one-out),
Table 5 (PEG K and permutation), and size/latency.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from qonnx_bert.analysis.evaluate import evaluate
from qonnx_bert.calibration.calibrate import calibrate
from qonnx_bert.calibration.ranges import RangeTable, model_fingerprint
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.files import atomic_output, read_json_object, require
from qonnx_bert.inputs.export import export_model
from qonnx_bert.inputs.glue import load_task
from qonnx_bert.inputs.sequences import glue_train_sequences
from qonnx_bert.quantize import Grouping, PegConfig, PegEqualConfig, Permutation, SchemeConfig, config_for
from qonnx_bert.quantize.api import QuantReport, quantize

logger = logging.getLogger(__name__)

MAIN, LEAVE_ONE_OUT, PEG = "main", "loo", "peg"


@dataclass(frozen=True)
class Variant:
    """A table row: a scheme config (None: FP32) and the section it belongs to.

    ``keep_float`` (role patterns) leaves those roles' activations in float on top
    of the scheme (``w32a8``): the paper's leave-one-out rows.
    """

    name: str
    config: SchemeConfig | None
    label: str = ""
    section: str = MAIN
    keep_float: tuple[str, ...] = ()

    @property
    def scheme(self) -> str | None:
        return None if self.config is None else self.config.scheme


# One leave-one-out row per distinct tensor family (attention.layernorm is ffn.input).
LOO_FAMILIES = {
    "embeddings.sum": "sum of embeddings",
    "embeddings.layernorm": "embeddings LayerNorm output",
    "attention.query": "query",
    "attention.key": "key",
    "attention.value": "value",
    "attention.scores": "attention scores (q·k)",
    "attention.softmax_input": "softmax input",
    "attention.softmax_output": "softmax output",
    "attention.context": "attention context",
    "attention.output": "self-attention output",
    "attention.residual_sum": "residual sum after attention",
    "ffn.input": "FFN input",
    "ffn.intermediate": "FFN intermediate (before GELU)",
    "ffn.gelu": "GELU output",
    "ffn.output": "FFN output",
    "ffn.residual_sum": "residual sum after FFN",
    "ffn.layernorm": "FFN LayerNorm output (layer output)",
    "pooler.output": "pooler output",
    "output": "final output (logits)",
}


def _loo(family: str, label: str) -> Variant:
    from qonnx_bert.analysis.leave_one_out import family_pattern

    return Variant(f"loo-{family}", config_for("w32a8"), label, LEAVE_ONE_OUT, keep_float=(family_pattern(family),))


def _equal(k: int, permutation: Permutation = Permutation.LAYER) -> PegEqualConfig:
    return PegEqualConfig(groups=k, permutation=permutation, intermediate_groups=1)


def _outlier_per_layer(k: int) -> PegConfig:
    return PegConfig(groups=k, permutation=Permutation.LAYER, intermediate_groups=1)


def _folded(k: int, target: str, gelu: bool) -> Variant:
    """A ``peg`` row: outlier-aware groups, the permutation folded, with or without GELU groups."""
    name = f"peg-outlier-k{k}-folded" + ("-gelu" if gelu else "") + ("-cpu" if target == "cpu" else "")
    label = (
        ", ".join(
            [
                f"PEG K={k}, outlier-aware, folded",
                *(["GELU output in 2 groups"] if gelu else []),
                *(["`--target cpu`"] if target == "cpu" else []),
            ]
        )
        + " (ours)"
    )
    config = PegConfig(groups=k, permutation=Permutation.MODEL, target=target, intermediate_groups=2 if gelu else 1)
    return Variant(name, config, label, PEG)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fp32", None, "FP32"),
        Variant("w8a32", config_for("w8a32"), "W8A32"),
        Variant("w32a8", config_for("w32a8"), "W32A8"),
        Variant("w8a8", config_for("w8a8"), "W8A8 PTQ (per-tensor)"),
        Variant("mp", config_for("mp"), "W8A{8,16} MP-PTQ"),
        Variant("auto-mp", config_for("auto-mp", budget=0.1), "W8A{8,16} auto-MP, 10% of activations (ours)"),
        Variant("peg-k6-noperm", _equal(6, Permutation.NONE), "PEG K=6, equal, no permutation", PEG),
        Variant("peg-k6", _equal(6), "PEG K=6, equal + permutation (paper)", PEG),
        Variant("peg-k3-noperm", _equal(3, Permutation.NONE), "PEG K=3, equal, no permutation", PEG),
        Variant("peg-k3", _equal(3), "PEG K=3, equal + permutation", PEG),
        # Every PegConfig field that has a default is pinned where a row depends on it: rows keep their meaning.
        Variant("peg-outlier-k6", _outlier_per_layer(6), "PEG K=6, outlier-aware groups (ours)", PEG),
        Variant("peg-outlier-k3", _outlier_per_layer(3), "PEG K=3, outlier-aware groups (ours)", PEG),
        *(
            _folded(k, target, gelu)
            for k, target, gelu in (
                (6, "portable", False),
                (3, "portable", False),
                (2, "portable", False),
                (6, "cpu", False),
                (2, "cpu", False),
                (6, "portable", True),
                (2, "portable", True),
                (6, "cpu", True),
                (2, "cpu", True),
            )
        ),
        *(_loo(f, label) for f, label in LOO_FAMILIES.items()),
    )
}
# Names that stand for several rows on the command line.
ALIASES = {
    "loo": ["w32a8", *(n for n, v in VARIANTS.items() if v.section == LEAVE_ONE_OUT)],
    "table5": ["w8a8", "peg-k3-noperm", "peg-k3", "peg-k6-noperm", "peg-k6"],
}


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise UsageError(f"unknown bench scheme {name!r}; choose from: {', '.join([*VARIANTS, *ALIASES])}")
    return VARIANTS[name]


def expand_variants(names: list[str]) -> list[str]:
    """Variant names with aliases (``loo``, ``table5``) expanded, duplicates dropped, order kept."""
    out = [n for name in names for n in ALIASES.get(name, [name])]
    return list(dict.fromkeys(get_variant(n).name for n in out))


@dataclass(frozen=True)
class BenchConfig:
    model: str  # a models/ name or checkpoint dir
    task: str
    data_dir: Path
    out_dir: Path
    num_sequences: int = 64
    batch_size: int = 16
    limit: int | None = None


def fp32_path(cfg: BenchConfig) -> Path:
    """The exported FP32 model of a task (exported on first use)."""
    path = cfg.out_dir / "models" / "fp32.onnx"
    if not path.exists():
        export_model(cfg.model, path)
    return path


RUN_FILE = "run.json"  # in each task folder: the model and --limit its cells were computed with


def checkpoint_fingerprint(model: str) -> str:
    """A hash of the files of ``model``'s checkpoint: a name or path can hold another model (a rebuild, a copy)."""
    from qonnx_bert.inputs.models import resolve_model

    h = hashlib.sha256()
    for path in sorted(p for p in resolve_model(model).path.iterdir() if p.is_file()):
        h.update(path.name.encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def prepare_task(cfg: BenchConfig) -> None:
    """Refuse a task folder whose cells came from another model or ``--limit`` (resuming would mix them),
    export the FP32 model once, and record the run.

    The folder records both (``run.json``) once its export is there, before its first cell, so
    an interrupted export leaves nothing; a folder from before that record is checked once
    against a fresh export and its cells' example counts.
    """
    record = cfg.out_dir / RUN_FILE
    mine = {"model": cfg.model, "checkpoint": checkpoint_fingerprint(cfg.model), "limit": cfg.limit}
    fix = f"pass a new -o directory, or delete {cfg.out_dir} to re-run this task"
    if record.exists():
        theirs = read_json_object(record, "bench run record", fix)
        if require(theirs, "checkpoint", str, str(record)) != mine["checkpoint"]:
            model = require(theirs, "model", str, str(record))
            raise UsageError(f"{cfg.out_dir} holds results of model {model}, not of {cfg.model}; {fix}")
        if require(theirs, "limit", (int, type(None)), str(record)) != cfg.limit:
            raise UsageError(
                f"{cfg.out_dir} holds results of {_limit_words(theirs['limit'])}, not {_limit_words(cfg.limit)}; {fix}"
            )
    else:
        _check_unrecorded(cfg, fix)
    cached = sorted((cfg.out_dir / "ranges").glob("seed*.json"))
    if cached and not RangeTable.load(cached[0]).fits(onnx.load(str(fp32_path(cfg)))):  # a cached export replaced
        raise UsageError(f"{cfg.out_dir} holds results for another build of {cfg.model}; {fix}")
    fp32_path(cfg)
    if not record.exists():
        with atomic_output(record) as tmp:
            tmp.write_text(json.dumps(mine, indent=1))


def _limit_words(limit: int | None) -> str:
    return f"--limit {limit}" if limit else "all dev examples (no --limit)"


def _check_unrecorded(cfg: BenchConfig, fix: str) -> None:
    """A folder without ``run.json``: its ranges (else its FP32 export) must fit a fresh export of the model,
    and its cells must count this run's dev examples.

    Fine-tuning is not bit-reproducible across machines, so a checkpoint rebuilt from the same
    recipe exports with other weights; cells cached for the old build would be mixed silently
    with new ones, and its ranges do not fit the new export.
    """
    cached = sorted((cfg.out_dir / "ranges").glob("seed*.json"))
    exported = cfg.out_dir / "models" / "fp32.onnx"
    if cached or exported.exists():
        with tempfile.TemporaryDirectory(dir=cfg.out_dir, prefix=".qonnx.") as tmp:
            fresh = Path(tmp) / "fp32.onnx"
            export_model(cfg.model, fresh)
            model = onnx.load(str(fresh))
            fits = (
                RangeTable.load(cached[0]).fits(model)
                if cached
                else model_fingerprint(onnx.load(str(exported))) == model_fingerprint(model)
            )
            if not fits:
                raise UsageError(f"{cfg.out_dir} holds results for another build of {cfg.model}; {fix}")
            if not exported.exists():  # the export this run needs: kept, not made twice
                exported.parent.mkdir(exist_ok=True)
                os.replace(fresh, exported)
    cells = sorted((cfg.out_dir / "cells").glob("*.json"))
    if cells:
        count = len(_dev_split(cfg).labels)
        done = read_json_object(cells[0], "bench cell", fix).get("num_examples")
        if done != count:
            raise UsageError(
                f"{cfg.out_dir} holds results of {done} dev examples, this run scores {count} "
                f"({_limit_words(cfg.limit)}); {fix}"
            )


def _dev_split(cfg: BenchConfig):
    from qonnx_bert.inputs.glue.tasks import limit_split

    return limit_split(load_task(cfg.task, "dev", cfg.data_dir), cfg.limit)


def ranges_path(cfg: BenchConfig, seed: int) -> Path:
    return cfg.out_dir / "ranges" / f"seed{seed}.json"


def ranges_for(cfg: BenchConfig, seed: int, fp32: onnx.ModelProto | None = None) -> RangeTable:
    """Calibration ranges of a seed (cached; seeded samples of the task's training split)."""
    path = ranges_path(cfg, seed)
    if path.exists():
        return RangeTable.load(path)
    fp32 = onnx.load(str(fp32_path(cfg))) if fp32 is None else fp32
    table = calibrate(fp32, glue_train_sequences(cfg.task, cfg.data_dir, cfg.num_sequences, seed), progress=False)
    table.save(path)
    return table


def cell_path(cfg: BenchConfig, variant: str, seed: int) -> Path:
    return cfg.out_dir / "cells" / f"{cfg.task}.{variant}.seed{seed}.json"


def quantize_variant(
    variant: Variant, fp32: onnx.ModelProto, ranges: RangeTable
) -> tuple[onnx.ModelProto, QuantReport]:
    if variant.keep_float:
        from qonnx_bert.analysis.leave_one_out import quantize_leave_one_out

        if variant.scheme != "w32a8":
            raise UsageError(f"variant {variant.name}: keep_float applies to w32a8 only")
        return quantize_leave_one_out(fp32, ranges, variant.keep_float)
    return quantize(fp32, variant.config, ranges)


def save_record(cfg: BenchConfig, record: dict) -> None:
    """Store a cell's result (atomic; a no-op when it is already stored)."""
    path = cell_path(cfg, record["variant"], record["seed"])
    if not path.exists():
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(record, indent=1))


def run_cell(cfg: BenchConfig, variant: Variant, seed: int) -> dict:
    """Evaluate one (task, variant, seed); returns the stored result if it already exists."""
    path = cell_path(cfg, variant.name, seed)
    if path.exists():
        return json.loads(path.read_text())
    fp32 = onnx.load(str(fp32_path(cfg)))
    model, notes, bits = fp32, [], {}
    if variant.scheme is not None:
        model, report = quantize_variant(variant, fp32, ranges_for(cfg, seed, fp32))
        notes, bits = report.lines(), report.activation_bits
    result = evaluate(model, _dev_split(cfg), batch_size=cfg.batch_size, progress=False)
    if seed == 0 and variant.scheme is not None and variant.section != LEAVE_ONE_OUT:  # kept for the size/latency table
        with atomic_output(model_path(cfg, variant.name)) as tmp:
            onnx.save(model, str(tmp))
    record = {
        "task": cfg.task,
        "variant": variant.name,
        "config": None if variant.config is None else variant.config.to_dict(),
        "seed": seed,
        "metrics": result.metrics,
        "num_examples": result.num_examples,
        "activation_bits": {str(k): v for k, v in bits.items()},
        "notes": notes,
    }
    save_record(cfg, record)
    return record


def median_score(records: list[dict]) -> float:
    """The paper reports the median over seeds."""
    return statistics.median(r["metrics"]["score"] for r in records)


def model_path(cfg: BenchConfig, variant: str) -> Path:
    """The seed-0 model file of a variant (written by its cell)."""
    return fp32_path(cfg) if variant == "fp32" else cfg.out_dir / "models" / f"{variant}.onnx"


def seed0_model(cfg: BenchConfig, variant: str) -> Path:
    """``model_path``, quantized again from the seed-0 ranges when the file is gone (cells
    and ranges are committed, models are not), so a resumed run keeps its size/latency rows."""
    path = model_path(cfg, variant)
    if not path.exists():
        fp32 = onnx.load(str(fp32_path(cfg)))
        model, _ = quantize_variant(get_variant(variant), fp32, ranges_for(cfg, 0, fp32))
        with atomic_output(path) as tmp:
            onnx.save(model, str(tmp))
    return path


def variant_label(name: str) -> str:
    """A variant's table label (its name where it has none)."""
    return VARIANTS[name].label if name in VARIANTS and VARIANTS[name].label else name


def _cells(row: list[float | None]) -> list[str]:
    return [f"{v:.2f}" if v is not None else "—" for v in row]


def mean_score(row: list[float | None]) -> float | None:
    """The row's mean, or None where a cell is missing (a partial mean would mislead)."""
    return statistics.mean(row) if row and all(v is not None for v in row) else None


def render_table(scores: dict[str, dict[str, float]], tasks: list[str], variants: list[str]) -> str:
    """The paper's Table 6 layout: a row per variant, a column per task, and their mean."""
    lines = ["| configuration | " + " | ".join(tasks) + " | mean |", "|---|" + "---:|" * (len(tasks) + 1)]
    for name in variants:
        row = [scores.get(name, {}).get(t) for t in tasks]
        lines.append(f"| {variant_label(name)} | " + " | ".join(_cells(row + [mean_score(row)])) + " |")
    return "\n".join(lines)


def render_leave_one_out(scores: dict[str, dict[str, float]], tasks: list[str], variants: list[str]) -> str:
    """Table 2: W32A8 with one role family in float, and how much of the mean it recovers."""
    base = [scores.get("w32a8", {}).get(t) for t in tasks]
    base_mean = mean_score(base)
    lines = [
        "| left in float (W32A8 otherwise) | " + " | ".join(tasks) + " | mean | Δ mean |",
        "|---|" + "---:|" * (len(tasks) + 2),
    ]
    if "w32a8" in scores:
        lines.append("| none (all activations quantized) | " + " | ".join(_cells(base + [base_mean])) + " | — |")
    for name in (v for v in variants if VARIANTS.get(v) and VARIANTS[v].section == LEAVE_ONE_OUT):
        row = [scores.get(name, {}).get(t) for t in tasks]
        mean = mean_score(row)
        delta = f"{mean - base_mean:+.2f}" if mean is not None and base_mean is not None else "—"
        lines.append(f"| {variant_label(name)} | " + " | ".join(_cells(row + [mean])) + f" | {delta} |")
    return "\n".join(lines)


def _peg_k(name: str) -> tuple[str, str, str]:
    """(K, permutation, grouping) of a row of Table 5; per-tensor W8A8 is K=1."""
    v = VARIANTS[name]
    if v.section != PEG:
        return "1 (per-tensor)", "—", "—"
    c = v.config
    grouping = "equal" if c.grouping == Grouping.EQUAL else "outlier-aware"
    if c.intermediate_groups > 1:
        grouping += f", GELU units in {c.intermediate_groups}"
    permuted = {Permutation.NONE: "no", Permutation.MODEL: "model-wide, folded", Permutation.LAYER: "per layer"}
    return str(c.groups), permuted[c.permutation], grouping


def render_peg(scores: dict[str, dict[str, float]], tasks: list[str], variants: list[str]) -> str:
    """Table 5: per-embedding-group quantization by number of groups K and permutation."""
    rows = [v for v in variants if v in VARIANTS and (VARIANTS[v].section == PEG or v == "w8a8")]
    lines = [
        "| configuration | K | permutation | groups | " + " | ".join(tasks) + " | mean |",
        "|---|---:|---|---|" + "---:|" * (len(tasks) + 1),
    ]
    for name in rows:
        row = [scores.get(name, {}).get(t) for t in tasks]
        k, permuted, grouping = _peg_k(name)
        lines.append(
            f"| {variant_label(name)} | {k} | {permuted} | {grouping} | "
            + " | ".join(_cells(row + [mean_score(row)]))
            + " |"
        )
    return "\n".join(lines)


def render_perf(perf: dict[str, dict]) -> str:
    """Size, CPU latency and 16-bit share per variant, relative to FP32 (timed in interleaved rounds)."""
    base = perf.get("fp32", next(iter(perf.values())))
    lines = [
        "| model | size MB | × FP32 size | latency ms (b=1, T=128) | × FP32 latency | activation quantizers | 16-bit |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v, p in perf.items():
        lines.append(
            f"| {variant_label(v)} | {p['size_mb']:.1f} | {p['size_mb'] / base['size_mb']:.2f} | "
            f"{p['latency_ms']:.2f} | {p['latency_ms'] / base['latency_ms']:.2f} | {p['activation_quantizers']} | "
            f"{100 * p['int16_fraction']:.0f}% |"
        )
    return "\n".join(lines)


def render_manifest(results: dict) -> str:
    m = results.get("manifest") or {}
    lines = [f"- command: `{results['command']}`"] if results.get("command") else []
    lines.append(
        f"- seeds: {results.get('seeds', 1)} (median shown); models: "
        + ", ".join(f"{t}: {name}" for t, name in (results.get("models") or {}).items())
    )
    lines += [f"- {k}: {v}" for k, v in m.items() if v is not None]
    return "\n".join(lines)


def render_results(results: dict) -> str:
    """The Markdown page of a bench run (``results.json`` content): every section that has rows."""
    scores, tasks = results["scores"], results["tasks"]
    variants = results.get("variants") or list(scores)
    main = [v for v in variants if VARIANTS.get(v) is None or VARIANTS[v].section != LEAVE_ONE_OUT]
    parts = ["## GLUE dev scores (the paper's Table 6 layout)", render_table(scores, tasks, main)]
    if any(VARIANTS.get(v) and VARIANTS[v].section == LEAVE_ONE_OUT for v in variants):
        parts += [
            "## Leave-one-out: which activations hurt (the paper's Table 2; weights FP32)",
            render_leave_one_out(scores, tasks, variants),
        ]
    if any(VARIANTS.get(v) and VARIANTS[v].section == PEG for v in variants):
        parts += [
            "## Per-embedding-group quantization: K and permutation (the paper's Table 5)",
            render_peg(scores, tasks, variants),
        ]
    if results.get("perf"):
        parts += [
            f"## Size and latency ({results.get('perf_task', tasks[0])} model, CPU provider)",
            render_perf(results["perf"]),
        ]
    parts += ["## Run", render_manifest(results)]
    return "\n\n".join(parts) + "\n"


def manifest() -> dict:
    """Versions, machine and git commit of a run."""
    import numpy
    import onnxruntime
    import transformers

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    here = Path(__file__).parent
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False, cwd=here)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=False, cwd=here
    )
    commit = git.stdout.strip() + ("+dirty" if git.returncode == 0 and dirty.stdout.strip() else "")
    return {
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch_version,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "git_commit": commit or None,
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
