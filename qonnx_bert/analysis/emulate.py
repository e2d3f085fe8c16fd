"""Accuracy of the device graph, emulated: GLUE through QNN's HTP emulator beside the CPU provider.

The emulator runs the graph HTP compiled (fixed-point ops, HTP's own
requantization), so its metric is the device graph's metric. It is not a proof
of bit-exactness on silicon; agreement with the CPU provider on the same QDQ
model says how far the two integer implementations drift apart.

How far is too far depends on the model: a value that two implementations round
to neighbouring steps (float summation order, fixed-point arithmetic) is one step
off, and a deep quantized model grows that to about its own quantization noise. So
the CPU provider is also compared with itself: its integer kernels against the same
QDQ graph computed as written in float (``cpu_session(fused=False)``). That
agreement is what two correct implementations of the model reach; HTP near it
drifts no more than any other implementation would.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx

from qonnx_bert.analysis.evaluate import EvalResult, evaluate
from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.inputs.glue import GlueSplit
from qonnx_bert.inputs.glue.metrics import predictions_from_logits
from qonnx_bert.targets.qnn import Soc, emulated_session

REGRESSION_TOLERANCE = 0.1  # STS-B predictions "agree" when within 0.1 on the 0-5 scale


@dataclass(frozen=True)
class EmulatedEval:
    """HTP-emulated and CPU-provider results on one split, and how often their predictions agree."""

    htp: EvalResult
    cpu: EvalResult
    agreement: float
    seconds_per_sequence: float
    cpu_self_agreement: float  # the CPU provider's integer kernels vs the QDQ graph in float


def task_agreement(split: GlueSplit, a_logits: np.ndarray, b_logits: np.ndarray) -> float:
    """Fraction of examples with the same prediction (regression: within ``REGRESSION_TOLERANCE``)."""
    a, b = predictions_from_logits(split.task, a_logits), predictions_from_logits(split.task, b_logits)
    same = np.abs(a - b) <= REGRESSION_TOLERANCE if split.task.labels is None else a == b
    return float(np.mean(same))


def evaluate_emulated(model: onnx.ModelProto, split: GlueSplit, soc: Soc, *, progress: bool = True) -> EmulatedEval:
    """Run ``split`` through the HTP emulator for ``soc`` and through the CPU provider."""
    session = emulated_session(model, soc)
    start = time.perf_counter()
    htp = evaluate(model, split, progress=progress, session=session)
    seconds = (time.perf_counter() - start) / max(len(split), 1)
    cpu = evaluate(model, split, progress=progress)
    as_written = evaluate(model, split, progress=progress, session=cpu_session(model, fused=False))
    return EmulatedEval(
        htp,
        cpu,
        task_agreement(split, htp.logits, cpu.logits),
        seconds,
        task_agreement(split, cpu.logits, as_written.logits),
    )
