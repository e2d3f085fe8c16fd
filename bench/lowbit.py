"""Low-bit weights, embeddings and QAT: the paper's Table 7 and Table 12 layouts on our checkpoints.

    .venv/bin/python bench/lowbit.py --data-dir GLUE --tasks rte,mrpc,stsb,sst2,cola -o bench/results/lowbit-minilm-l6
    .venv/bin/python bench/lowbit.py --data-dir GLUE --tasks rte --rows fp32,w4a32-ptq,w4a32-adaround -o out/quick

Each task's checkpoint is ``--model``-TASK (a ``models/`` recipe, built with ``qonnx models
build``) unless ``--checkpoint TASK=DIR`` names one. Per task: export, calibrate (64 training
sequences, current min-max, seed 0), then one cell per row: PTQ rows quantize and lower the
weights (``qonnx_bert.quantize.lowbit``); QAT rows run ``run_qat`` from those PTQ ranges
(``--qat-epochs``, ``--seeds`` seeds, median reported). Every cell is the GLUE dev metric of
the ONNX model in ONNX Runtime (CPU provider), its file size and its ratio to FP32. Cells are
cached as JSON under ``-o``: a rerun skips what is done. Writes ``lowbit.json``, ``lowbit.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from qonnx_bert.analysis.evaluate import evaluate
from qonnx_bert.calibration.adaround import AdaRoundConfig
from qonnx_bert.calibration.calibrate import calibrate
from qonnx_bert.calibration.ranges import RangeTable
from qonnx_bert.calibration.weight_grid import Granularity, WeightGrid
from qonnx_bert.core.files import atomic_output
from qonnx_bert.core.metrics import sqnr_db
from qonnx_bert.inputs.export import export_model
from qonnx_bert.inputs.glue.tasks import get_task, load_task
from qonnx_bert.inputs.sequences import glue_train_sequences
from qonnx_bert.quantize.api import quantize
from qonnx_bert.quantize.lowbit import LowBitConfig
from qonnx_bert.quantize.schemes import config_for
from qonnx_bert.training.qat import QatConfig, run_qat


@dataclass(frozen=True)
class Row:
    label: str
    scheme: str | None  # None: the FP32 model
    lowbit: LowBitConfig
    qat: bool = False
    distill: float = 0.0  # QAT towards the FP32 model's outputs (``QatConfig.distill``)


W4, W6 = WeightGrid(4), WeightGrid(6)
W4_TENSOR = WeightGrid(4, Granularity.PER_TENSOR)  # the paper's W4A32 setting: one scale per weight tensor
ROWS = {
    "fp32": Row("FP32", None, LowBitConfig()),
    "w8a32-ptq": Row("W8A32 PTQ (per-tensor)", "w8a32", LowBitConfig()),
    "w8a32-e6-ptq": Row("W8A32, 6-bit embeddings PTQ", "w8a32", LowBitConfig(embeddings=W6)),
    "w8a32-e4-ptq": Row("W8A32, 4-bit embeddings PTQ", "w8a32", LowBitConfig(embeddings=W4)),
    "w8a32-e2-ptq": Row("W8A32, 2-bit embeddings PTQ", "w8a32", LowBitConfig(embeddings=WeightGrid(2))),
    "w6a32-ptq": Row("W6A32 PTQ", "w8a32", LowBitConfig(W6)),
    "w4a32-ptq": Row("W4A32 PTQ", "w8a32", LowBitConfig(W4)),
    "w4a32-adaround": Row("W4A32 AdaRound", "w8a32", LowBitConfig(W4, adaround=AdaRoundConfig())),
    "w4a32-tensor-ptq": Row("W4A32 PTQ, per-tensor weights", "w8a32", LowBitConfig(W4_TENSOR)),
    "w4a32-tensor-adaround": Row(
        "W4A32 AdaRound, per-tensor weights", "w8a32", LowBitConfig(W4_TENSOR, adaround=AdaRoundConfig())
    ),
    "w2a32-ptq": Row("W2A32 PTQ", "w8a32", LowBitConfig(WeightGrid(2))),
    "w2a32-adaround": Row("W2A32 AdaRound", "w8a32", LowBitConfig(WeightGrid(2), adaround=AdaRoundConfig())),
    "w4a8-ptq": Row("W4A8 PTQ", "w8a8", LowBitConfig(W4)),
    "w4a8-e2-ptq": Row("W4A8, 2-bit embeddings PTQ", "w8a8", LowBitConfig(W4, WeightGrid(2))),
    "w4a8-peg-ptq": Row("W4A8 PEG PTQ", "peg", LowBitConfig(W4)),
    "w4a8-peg-e2-ptq": Row("W4A8 PEG, 2-bit embeddings PTQ", "peg", LowBitConfig(W4, WeightGrid(2))),
    "w8a8-ptq": Row("W8A8 PTQ (per-tensor)", "w8a8", LowBitConfig()),
    "w8a8-qat": Row("W8A8 QAT (per-tensor)", "w8a8", LowBitConfig(), qat=True),
    "w8a8-qat-kd": Row("W8A8 QAT (per-tensor), distilled from FP32", "w8a8", LowBitConfig(), qat=True, distill=1.0),
    "w4a32-qat": Row("W4A32 QAT", "w8a32", LowBitConfig(W4), qat=True),
    "w4a8-qat": Row("W4A8 QAT", "w8a8", LowBitConfig(W4), qat=True),
    "w4a8-e2-qat": Row("W4A8, 2-bit embeddings QAT", "w8a8", LowBitConfig(W4, WeightGrid(2)), qat=True),
    "mp-ptq": Row("MP PTQ (16-bit FFN input, output, residual sum)", "mp", LowBitConfig()),
    "mp-qat": Row("MP QAT", "mp", LowBitConfig(), qat=True),
    "w4-mp-e2-ptq": Row("W4, MP activations, 2-bit embeddings PTQ", "mp", LowBitConfig(W4, WeightGrid(2))),
    "w4-mp-e2-qat": Row("W4, MP activations, 2-bit embeddings QAT", "mp", LowBitConfig(W4, WeightGrid(2)), qat=True),
    "peg-qat": Row("PEG QAT", "peg", LowBitConfig(), qat=True),
    "w4a8-peg-e2-qat": Row("W4A8 PEG, 2-bit embeddings QAT", "peg", LowBitConfig(W4, WeightGrid(2)), qat=True),
}
TABLE_12 = ("fp32", "w8a32-ptq", "w8a32-e6-ptq", "w8a32-e4-ptq", "w8a32-e2-ptq")


def _prepared(task: str, checkpoint: str, data_dir, work: Path) -> tuple[onnx.ModelProto, RangeTable]:
    fp32_path, ranges_path = work / "fp32.onnx", work / "ranges.json"
    if not fp32_path.exists():
        export_model(checkpoint, fp32_path)
    fp32 = onnx.load(str(fp32_path))
    if not ranges_path.exists():
        calibrate(fp32, glue_train_sequences(task, data_dir, 64, 0), progress=False).save(ranges_path)
    return fp32, RangeTable.load(ranges_path)


def _model(row: Row, task, checkpoint, data_dir, fp32, ranges, work: Path, seed: int, epochs: int) -> onnx.ModelProto:
    if row.scheme is None:
        return fp32
    if row.qat:
        out = work / f"qat-{row.label.replace(' ', '_').replace(',', '')}-s{seed}"
        config = QatConfig(task, row.scheme, row.lowbit, epochs=epochs, seed=seed, distill=row.distill)
        run_qat(checkpoint, data_dir, work / "ranges.json", out, config, progress=False)
        return onnx.load(str(out / "model.qdq.onnx"))
    return quantize(fp32, config_for(row.scheme, **row.lowbit.fields()), ranges)[0]


def _fp32_logits(fp32: onnx.ModelProto, dev, work: Path) -> np.ndarray:
    path = work / "fp32-dev-logits.npy"
    if not path.exists():
        with atomic_output(path) as tmp, tmp.open("wb") as f:  # a killed run leaves no truncated cache
            np.save(f, evaluate(fp32, dev, progress=False).logits)
    return np.load(path)


def run_cell(name: str, task: str, checkpoint: str, args, seed: int) -> dict:
    work = args.output / "work" / task
    cell = args.output / "cells" / task / f"{name}-s{seed}.json"
    if cell.exists():
        return json.loads(cell.read_text())
    work.mkdir(parents=True, exist_ok=True)
    fp32, ranges = _prepared(task, checkpoint, args.data_dir, work)
    model = _model(ROWS[name], task, checkpoint, args.data_dir, fp32, ranges, work, seed, args.qat_epochs)
    dev = load_task(task, "dev", args.data_dir)
    result = evaluate(model, dev, progress=False)
    record = {"row": name, "task": task, "seed": seed, "score": result.metrics["score"]}
    if ROWS[name].scheme is not None:  # the dev logits' SQNR to FP32: finer than a small dev set's metric
        record["sqnr_db"] = sqnr_db(_fp32_logits(fp32, dev, work), result.logits)
    record |= {"bytes": model.ByteSize(), "fp32_bytes": fp32.ByteSize()}
    with atomic_output(cell) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return record


def render(results: dict[str, dict[str, dict]], tasks: list[str], rows: list[str], command: str) -> str:
    """Markdown: the command, one table in the paper's Table 7 layout and, if its rows ran, Table 12's."""

    def table(names: list[str], title: str) -> list[str]:
        sqnr = any("sqnr_db" in results[n][t] for n in names for t in tasks)
        head = f"| {title} | " + " | ".join(tasks) + " | mean | size (MB) | × FP32 smaller |"
        head += " mean logit SQNR to FP32 (dB) |" if sqnr else ""
        lines = [head, "|" + "---|" * (len(tasks) + 4 + sqnr)]
        for name in names:
            cells = [results[name][t] for t in tasks]
            scores = [c["score"] for c in cells]
            ratio = statistics.median(c["fp32_bytes"] / c["bytes"] for c in cells)
            size = statistics.median(c["bytes"] for c in cells) / 1e6
            row = " | ".join(f"{s:.2f}" for s in scores)
            line = f"| {ROWS[name].label} | {row} | {statistics.mean(scores):.2f} | {size:.2f} | {ratio:.2f} |"
            if sqnr:
                values = [c.get("sqnr_db") for c in cells]
                line += f" {statistics.mean(values):.1f} |" if None not in values else " — |"
            lines.append(line)
        return lines

    lines = ["# Low-bit weights, embeddings and QAT (the paper's Tables 7 and 12)", "", f"`{command}`", ""]
    lines += table([r for r in rows if r not in TABLE_12 or r == "fp32"], "Table 7 layout")
    if any(r in TABLE_12[1:] for r in rows):
        lines += ["", *table([r for r in TABLE_12 if r in rows], "Table 12 layout")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--tasks", default="rte,mrpc,stsb,sst2,cola")
    p.add_argument("--model", default="minilm-l6", help="recipe prefix: the checkpoint of task T is MODEL-T")
    p.add_argument("--checkpoint", action="append", default=[], metavar="TASK=DIR", help="a task's checkpoint")
    p.add_argument("--rows", default=",".join(ROWS), help=f"rows to run (default all): {', '.join(ROWS)}")
    p.add_argument("--seeds", type=int, default=3, help="QAT seeds (median reported; PTQ rows are deterministic)")
    p.add_argument("--qat-epochs", type=int, default=3)
    p.add_argument("-o", "--output", type=Path, required=True)
    args = p.parse_args(argv)
    tasks = [get_task(t).name for t in args.tasks.split(",")]
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    checkpoints = {t: f"{args.model}-{t}" for t in tasks} | dict(c.split("=", 1) for c in args.checkpoint)
    results: dict[str, dict[str, dict]] = {}
    for name in rows:
        for task in tasks:
            seeds = range(args.seeds) if ROWS[name].qat else range(1)
            cells = [run_cell(name, task, checkpoints[task], args, s) for s in seeds]
            median = statistics.median(c["score"] for c in cells)
            record = {**cells[0], "score": median, "seeds": [c["score"] for c in cells]}
            if all("sqnr_db" in c for c in cells):
                record["sqnr_db"] = statistics.median(c["sqnr_db"] for c in cells)
            results.setdefault(name, {})[task] = record
            print(f"{ROWS[name].label:32s} {task:6s} {median:7.2f}  ×{cells[0]['fp32_bytes'] / cells[0]['bytes']:.2f}")
    with atomic_output(args.output / "lowbit.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    with atomic_output(args.output / "lowbit.md") as tmp:
        command = " ".join(["python bench/lowbit.py", *(sys.argv[1:] if argv is None else argv)])
        tmp.write_text(render(results, tasks, rows, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
