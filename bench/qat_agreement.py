"""How far apart the ways of running one QAT-trained QDQ model are, on a GLUE dev set (issue 21).

For each ``qat-*`` run folder that ``bench/lowbit.py`` left in ``WORK/<task>/`` this compares the dev logits of

* ``simulated``: what QAT's own PyTorch module computed (``dev_logits.npy``, batches of 64 padded to their longest);
* ``as written b16`` / ``as written b1``: ONNX Runtime with every graph optimization off (each QDQ unit runs
  DequantizeLinear -> float op -> QuantizeLinear, the graph's own arithmetic), batches of 16 and single sequences;
* ``fused b16``: ONNX Runtime's integer kernels, what ``qonnx eval`` and the bench tables run.

Exact arithmetic would make all four equal for every sequence (padding is masked; ranges are static). They differ
only by float summation order, which moves a value across a rounding boundary now and then; the table says how much
that moves the logits (SQNR in dB against ``as written b16``) and the labels (agreement, %). Writes ``OUT.md``.

    python bench/qat_agreement.py --work bench/results/lowbit-minilm-l6-qat-rte/work --task rte \
        --data-dir ../shared/data/glue --out bench/results/lowbit-minilm-l6-qat-rte/agreement.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

from qonnx_bert.analysis.evaluate import evaluate
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.files import atomic_output, guard
from qonnx_bert.core.metrics import sqnr_db
from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.inputs.glue import load_task
from qonnx_bert.inputs.glue.metrics import predictions_from_logits, score
from qonnx_bert.inputs.glue.tasks import split_file
from qonnx_bert.training.qat import DEV_LOGITS


def logits(run: Path, split) -> dict[str, tuple[np.ndarray, float]]:
    """(dev logits, dev score) of each way of running the run's model."""
    model = onnx.load(str(run / "model.qdq.onnx"))
    as_written = cpu_session(model, fused=False)
    out = {}
    for name, session, batch in (
        ("as written b16", as_written, 16),
        ("as written b1", as_written, 1),
        ("fused b16", cpu_session(model), 16),
    ):
        result = evaluate(model, split, batch_size=batch, progress=False, session=session)
        out[name] = result.logits, result.metrics["score"]
    simulated = np.load(run / DEV_LOGITS)
    out["simulated"] = (
        simulated,
        score(split.task, predictions_from_logits(split.task, simulated), split.labels)["score"],
    )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    try:  # the QAT runs and the dev split are read: --out must be none of them
        guard([args.work / args.task, split_file(args.task, "dev", args.data_dir)], [args.out])
    except UsageError as err:
        p.error(str(err))
    split = load_task(args.task, "dev", args.data_dir)
    lines = [
        f"# One QAT model, four ways of running it ({args.task} dev, {len(split)} examples)",
        "",
        f"`python bench/qat_agreement.py {' '.join(sys.argv[1:])}`",
        "",
        "SQNR and label agreement are against ONNX Runtime running the graph as written, in batches of 16.",
        "",
        "| run | way | dev score | logit SQNR (dB) | same label (%) |",
        "|---|---|---:|---:|---:|",
    ]
    for run in sorted((args.work / args.task).glob("qat-*")):
        ways = logits(run, split)
        reference = ways["as written b16"][0]
        for name, (values, dev_score) in ways.items():
            same = float(np.mean(values.argmax(1) == reference.argmax(1)) * 100)
            snr = "—" if name == "as written b16" else f"{sqnr_db(reference, values):.1f}"
            lines.append(f"| {run.name} | {name} | {dev_score:.2f} | {snr} | {same:.1f} |")
        print("\n".join(lines[-4:]), flush=True)
    with atomic_output(args.out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
