"""What a scheme measures beyond the ranges file: its calibration sequences, replayed.

A ranges file stores the sequences it was calibrated on, its estimator and batch size, so a
scheme that rewrites the graph (PEG's split, SmoothQuant's scaled MatMul inputs) can calibrate
the tensors it creates exactly as ``qonnx calibrate`` would have, read per-channel statistics
that the file does not hold, and compare candidate models' outputs on those same sequences
(auto-mp's sensitivity scan, smoothquant's ``alpha=auto``).
"""

from __future__ import annotations

import logging
from functools import partial

import numpy as np
import onnx

from qonnx_bert.calibration.calibrate import estimate_ranges, per_tensor_targets, sequence_batches
from qonnx_bert.calibration.collector import Target
from qonnx_bert.calibration.estimators import EstimatorSpec, PerChannel, make_estimator
from qonnx_bert.calibration.ranges import RangeTable
from qonnx_bert.calibration.segments import SplitModel
from qonnx_bert.calibration.tensors import quantizable_tensors
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.sequences import Sequences, sample_sequences, shipped_sentences
from qonnx_bert.quantize.schemes.context import SchemeContext

logger = logging.getLogger(__name__)

# Activations one replayed segment exposes per batch. Below calibration's default: a rewritten
# model and its float weights are held at the same time here, and the few new tensors need no
# wide segments.
REPLAY_MAX_MEMORY_MB = 128.0


def _from_file(cal: dict) -> Sequences | None:
    if not cal.get("sequences"):
        return None
    return Sequences.from_pairs(cal["sequences"], cal.get("source", "ranges file"), cal.get("seed", 0))


def _stored(ctx: SchemeContext) -> tuple[Sequences, dict]:
    """The file's sequences and calibration settings; a ranges file written before they were stored is refused."""
    cal = ctx.require_ranges().calibration
    sequences = _from_file(cal)
    if sequences is None:
        raise UsageError("ranges file holds no calibration sequences; re-run `qonnx calibrate` with this qonnx version")
    return sequences, cal


def calibrate_new_tensors(ctx: SchemeContext, model: onnx.ModelProto | SplitModel, known: set[str]) -> dict[str, dict]:
    """Ranges-file entries for the quantizable tensors of ``model`` not in ``known``, with the file's estimator."""
    graph = model.graph if isinstance(model, SplitModel) else model
    layouts = [t for t in quantizable_tensors(graph) if t.name not in known]
    if not layouts:  # e.g. PEG with K = 1 and no permutation: nothing was rewritten
        return {}
    sequences, cal = _stored(ctx)
    spec = EstimatorSpec(cal["estimator"], dict(cal.get("params", {})))
    est = estimate_ranges(
        model,
        per_tensor_targets(layouts, spec, {}),
        sequences,
        batch_size=cal.get("batch_size", 8),
        max_memory=REPLAY_MAX_MEMORY_MB,
        progress=False,
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


def calibration_sequences(ranges: RangeTable | None) -> Sequences:
    """The sequences the ranges were calibrated on; the shipped sentences for older ranges files."""
    sequences = _from_file(ranges.calibration if ranges is not None else {})
    if sequences is not None:
        return sequences
    logger.warning("the ranges file holds no calibration sequences; measuring on the shipped sentences")
    return sample_sequences(shipped_sentences(), None, 32, 0, "shipped")


def calibration_feeds(model: onnx.ModelProto, ranges: RangeTable | None) -> list[dict[str, np.ndarray]]:
    """The calibration sequences as the length-bucketed feeds calibration used."""
    batch_size = (ranges.calibration if ranges is not None else {}).get("batch_size", 8)
    batches, _ = sequence_batches(Encoder.from_model(model), calibration_sequences(ranges), batch_size)
    return list(batches())


def logits_on(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Output 0 on the CPU provider over ``feeds``, padding rows of static-batch feeds dropped."""
    session = cpu_session(model)
    return np.concatenate([session.run(None, f)[0][f["attention_mask"].any(axis=1)] for f in feeds])
