"""Statistics a rewriting scheme needs beyond the ranges file: its calibration sequences, replayed.

A ranges file stores the sequences it was calibrated on, its estimator and batch size, so a
scheme that rewrites the graph (PEG's split, SmoothQuant's scaled MatMul inputs) can calibrate
the tensors it creates exactly as ``qonnx calibrate`` would have, and read per-channel
statistics that the file does not hold.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import onnx

from qonnx_bert.calibration.calibrate import estimate_ranges, per_tensor_targets
from qonnx_bert.calibration.collector import Target
from qonnx_bert.calibration.estimators import EstimatorSpec, PerChannel, make_estimator
from qonnx_bert.calibration.tensors import quantizable_tensors
from qonnx_bert.core.errors import UsageError
from qonnx_bert.inputs.sequences import Sequences
from qonnx_bert.quantize.schemes.context import SchemeContext


def _stored(ctx: SchemeContext) -> tuple[Sequences, dict]:
    cal = ctx.require_ranges().calibration
    if not cal.get("sequences"):
        raise UsageError("ranges file holds no calibration sequences; re-run `qonnx calibrate` with this qonnx version")
    return Sequences.from_pairs(cal["sequences"], cal.get("source", "ranges file"), cal.get("seed", 0)), cal


def calibrate_new_tensors(ctx: SchemeContext, model: onnx.ModelProto, known: set[str]) -> dict[str, dict]:
    """Ranges-file entries for the quantizable tensors of ``model`` not in ``known``, with the file's estimator."""
    layouts = [t for t in quantizable_tensors(model) if t.name not in known]
    if not layouts:  # e.g. PEG with K = 1 and no permutation: nothing was rewritten
        return {}
    sequences, cal = _stored(ctx)
    spec = EstimatorSpec(cal["estimator"], dict(cal.get("params", {})))
    est = estimate_ranges(
        model, per_tensor_targets(layouts, spec, {}), sequences, batch_size=cal.get("batch_size", 8), progress=False
    )
    return {
        t.name: {"role": None, "min": float(est[t.name].range()[0][0]), "max": float(est[t.name].range()[1][0])}
        for t in layouts
    }


def channel_absmax(ctx: SchemeContext, model: onnx.ModelProto, tensors: list[str]) -> dict[str, np.ndarray]:
    """max |x| of each channel (last axis) of each of ``tensors`` over the stored sequences, padding excluded."""
    by_name = {t.name: t for t in quantizable_tensors(model, op_types=("MatMul",))}
    targets = [Target(by_name[t], partial(make_estimator, "current_minmax", PerChannel()), True) for t in tensors]
    sequences, cal = _stored(ctx)
    est = estimate_ranges(model, targets, sequences, batch_size=cal.get("batch_size", 8), progress=False)
    out = {}
    for t in targets:
        lo, hi = est[t.result_key].range()
        out[t.layout.name] = np.maximum(np.abs(np.asarray(lo)), np.abs(np.asarray(hi))).astype(np.float32)
    return out
