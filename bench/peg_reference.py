"""Lowered PEG against its per-channel reference on a fine-tuned checkpoint's full dev set.

    .venv/bin/python bench/peg_reference.py                       # SST-2 -> bench/results/peg-reference-sst2.{json,md}
    .venv/bin/python bench/peg_reference.py --task rte

The checkpoint of ``bench/run_glue.sh`` (``models/`` recipe ``minilm-l6-<task>``) is
exported, calibrated on 64 seeded training sequences (seed 0, as the GLUE bench), and
quantized by each PEG configuration; ``qonnx_bert/analysis/peg_reference.py`` builds the reference: the
same groups and ranges as per-channel QDQ on the un-rewritten W8A8 graph. Both run on the
CPU provider over every dev example. Reported: each model's GLUE metric, the share of
examples where the lowered model predicts what the reference predicts, and the logit
SQNR of the lowered model against the reference beside the reference's against FP32.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import onnx

from qonnx_bert.analysis.evaluate import evaluate
from qonnx_bert.analysis.peg_reference import per_channel_reference
from qonnx_bert.calibration.calibrate import calibrate
from qonnx_bert.core.files import atomic_output
from qonnx_bert.core.metrics import argmax_agreement, sqnr_db
from qonnx_bert.inputs.export import export_model
from qonnx_bert.inputs.glue import load_task
from qonnx_bert.inputs.sequences import glue_train_sequences
from qonnx_bert.quantize import config_for, quantize

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "peg (K=6, outlier-aware, folded, GELU groups), portable": ("peg", {"target": "portable"}),
    "peg (K=6, outlier-aware, folded, GELU groups), --target cpu": ("peg", {"target": "cpu"}),
    "peg K=2, --target cpu, --intermediate-groups 1": ("peg", {"groups": 2, "target": "cpu", "intermediate_groups": 1}),
    "peg-equal K=6 (the paper's), portable": ("peg-equal", {"groups": 6}),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="sst2")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "glue")
    args = p.parse_args()
    out = ROOT / "bench" / "results" / f"peg-reference-{args.task}"
    dev = load_task(args.task, "dev", args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fp32.onnx"
        export_model(f"minilm-l6-{args.task}", path)
        fp32 = onnx.load(str(path))
    ranges = calibrate(fp32, glue_train_sequences(args.task, args.data_dir, 64, 0), progress=False)
    exact = evaluate(fp32, dev, progress=False)
    rows = []
    for label, (scheme, options) in CONFIGS.items():
        config = config_for(scheme, **options)
        lowered, _ = quantize(fp32, config, ranges)
        got = evaluate(lowered, dev, progress=False)
        want = evaluate(per_channel_reference(fp32, ranges, config), dev, progress=False)
        rows.append(
            {
                "configuration": label,
                "config": config.to_dict(),
                "lowered_score": got.metrics["score"],
                "reference_score": want.metrics["score"],
                "agreement": argmax_agreement(want.logits, got.logits),
                "sqnr_lowered_vs_reference_db": sqnr_db(want.logits, got.logits),
                "sqnr_reference_vs_fp32_db": sqnr_db(exact.logits, want.logits),
                "sqnr_lowered_vs_fp32_db": sqnr_db(exact.logits, got.logits),
            }
        )
        print(rows[-1], flush=True)
    record = {"task": args.task, "num_examples": exact.num_examples, "fp32_score": exact.metrics["score"], "rows": rows}
    with atomic_output(out.with_suffix(".json")) as tmp_json:
        tmp_json.write_text(json.dumps(record, indent=1))
    lines = [
        f"# Lowered PEG vs its per-channel reference ({args.task}, {exact.num_examples} dev examples, FP32 "
        f"{exact.metrics['score']:.2f})",
        "",
        "`bench/peg_reference.py`; logit SQNR in dB, CPU provider.",
        "",
        "| configuration | lowered | reference | same prediction | SQNR lowered vs reference | SQNR reference vs "
        "FP32 | SQNR lowered vs FP32 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['configuration']} | {r['lowered_score']:.2f} | {r['reference_score']:.2f} | "
        f"{100 * r['agreement']:.1f}% | "
        f"{r['sqnr_lowered_vs_reference_db']:.1f} | {r['sqnr_reference_vs_fp32_db']:.1f} | "
        f"{r['sqnr_lowered_vs_fp32_db']:.1f} |"
        for r in rows
    ]
    with atomic_output(out.with_suffix(".md")) as tmp_md:
        tmp_md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
