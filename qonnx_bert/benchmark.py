"""GLUE benchmark: export -> calibrate -> quantize -> evaluate, one resumable cell at a time.

A cell is (task, variant, seed). Its result is a JSON file under the output
directory, written atomically when the cell finishes, so a crashed or killed run
resumes where it stopped and loses nothing. Intermediate models and ranges are
cached beside the results. Variants name a scheme plus its options, so the
paper's table rows (W8A8, MP, PEG with K and permutation) are data, not code.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from qonnx_bert.calibration.calibrate import calibrate
from qonnx_bert.calibration.ranges import RangeTable
from qonnx_bert.calibration.sources import glue_train_sequences
from qonnx_bert.errors import UsageError
from qonnx_bert.evaluate import evaluate
from qonnx_bert.export import export_model
from qonnx_bert.files import atomic_output
from qonnx_bert.glue import load_task
from qonnx_bert.quantize import quantize

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """A table row: a scheme (None: FP32) and its options."""

    name: str
    scheme: str | None
    options: dict = field(default_factory=dict)
    label: str = ""


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fp32", None, label="FP32"),
        Variant("w8a32", "w8a32", label="W8A32"),
        Variant("w32a8", "w32a8", label="W32A8"),
        Variant("w8a8", "w8a8", label="W8A8 PTQ (per-tensor)"),
        Variant("mp", "mp", label="W8A{8,16} MP-PTQ"),
        Variant("peg-k6-noperm", "peg-equal", {"groups": 6, "no_permute": True}, "PEG K=6, equal, no permutation"),
        Variant("peg-k6", "peg-equal", {"groups": 6}, "PEG K=6, equal + permutation (paper)"),
        Variant("peg-k3-noperm", "peg-equal", {"groups": 3, "no_permute": True}, "PEG K=3, equal, no permutation"),
        Variant("peg-k3", "peg-equal", {"groups": 3}, "PEG K=3, equal + permutation"),
        Variant("peg-outlier-k6", "peg", {"groups": 6}, "PEG K=6, outlier-aware groups (ours)"),
        Variant("peg-outlier-k3", "peg", {"groups": 3}, "PEG K=3, outlier-aware groups (ours)"),
    )
}


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise UsageError(f"unknown bench scheme {name!r}; choose from: {', '.join(VARIANTS)}")
    return VARIANTS[name]


@dataclass(frozen=True)
class BenchConfig:
    model: str  # a models/ name or checkpoint dir
    task: str
    data_dir: Path
    out_dir: Path
    num_sequences: int = 64
    batch_size: int = 16
    limit: int | None = None


def _fp32_path(cfg: BenchConfig) -> Path:
    path = cfg.out_dir / "models" / "fp32.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        export_model(cfg.model, path)
    return path


def _ranges(cfg: BenchConfig, fp32: onnx.ModelProto, seed: int) -> RangeTable:
    path = cfg.out_dir / "ranges" / f"seed{seed}.json"
    if path.exists():
        return RangeTable.load(path)
    table = calibrate(fp32, glue_train_sequences(cfg.task, cfg.data_dir, cfg.num_sequences, seed), progress=False)
    table.save(path)
    return table


def cell_path(cfg: BenchConfig, variant: str, seed: int) -> Path:
    return cfg.out_dir / "cells" / f"{cfg.task}.{variant}.seed{seed}.json"


def run_cell(cfg: BenchConfig, variant: Variant, seed: int) -> dict:
    """Evaluate one (task, variant, seed); returns the stored result if it already exists."""
    path = cell_path(cfg, variant.name, seed)
    if path.exists():
        return json.loads(path.read_text())
    fp32 = onnx.load(str(_fp32_path(cfg)))
    model, notes, bits = fp32, [], {}
    if variant.scheme is not None:
        model, report = quantize(fp32, variant.scheme, _ranges(cfg, fp32, seed), **variant.options)
        notes, bits = report.lines(), report.activation_bits
    split = load_task(cfg.task, "dev", cfg.data_dir)
    if cfg.limit:
        from qonnx_bert.glue.tasks import limit_split

        split = limit_split(split, cfg.limit)
    result = evaluate(model, split, batch_size=cfg.batch_size, progress=False)
    if seed == 0 and variant.scheme is not None:
        onnx.save(model, str(cfg.out_dir / "models" / f"{variant.name}.onnx"))
    record = {"task": cfg.task, "variant": variant.name, "seed": seed, "metrics": result.metrics,
              "num_examples": result.num_examples, "activation_bits": {str(k): v for k, v in bits.items()}, "notes": notes}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return record


def median_score(records: list[dict]) -> float:
    """The paper reports the median over seeds."""
    return statistics.median(r["metrics"]["score"] for r in records)


def model_path(cfg: BenchConfig, variant: str) -> Path:
    """The seed-0 model file of a variant (written by its cell)."""
    return _fp32_path(cfg) if variant == "fp32" else cfg.out_dir / "models" / f"{variant}.onnx"


def render_table(scores: dict[str, dict[str, float]], tasks: list[str], variants: list[str]) -> str:
    """The paper's Table 6 layout: a row per variant, a column per task, and their mean."""
    head = "| configuration | " + " | ".join(tasks) + " | mean |"
    lines = [head, "|---|" + "---:|" * (len(tasks) + 1)]
    for name in variants:
        row = [scores.get(name, {}).get(t) for t in tasks]
        cells = [f"{v:.2f}" if v is not None else "—" for v in row]
        mean = f"{statistics.mean(row):.2f}" if all(v is not None for v in row) else "—"
        lines.append(f"| {VARIANTS[name].label or name} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)


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
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "torch": torch_version,
            "transformers": transformers.__version__, "numpy": numpy.__version__, "git_commit": commit or None,
            "machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version()}
