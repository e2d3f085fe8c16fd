"""``smoothquant``: W8A8 for the CPU provider with SmoothQuant's per-channel smoothing of MatMul inputs.

Beyond the paper (Xiao et al. 2023; what ONNX Runtime's Neural Compressor, AMD Quark and
NVIDIA ModelOpt offer): each MatMul input's per-channel absolute maxima (replayed from the
ranges file's sequences) set the factors of ``passes.smooth``; the smoothed inputs are
calibrated on the same sequences with the file's estimator; then the plan is W8A8's CPU
lowering (``passes.plan.cpu_plan``): uint8 MatMul inputs, int8 per-channel weights, the
rest float. The FP32 graph it quantizes equals the original up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from qonnx_bert.core.metrics import sqnr_db
from qonnx_bert.core.modelinfo import TARGET_KEY
from qonnx_bert.passes.plan import Plan, activation_ranges, cpu_plan
from qonnx_bert.passes.qdq import insert_qdq
from qonnx_bert.passes.smooth import SmoothSite, smooth, smoothing_scales, smoothing_sites, weight_row_absmax
from qonnx_bert.quantize.config import SmoothQuantConfig
from qonnx_bert.quantize.schemes.context import SchemeContext
from qonnx_bert.quantize.schemes.replay import calibrate_new_tensors, calibration_feeds, channel_absmax, logits_on

# ``alpha=auto`` tries these; SmoothQuant reports 0.4-0.6 for most LLMs and up to 0.75-0.85 for some.
ALPHA_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class SmoothQuantScheme:
    config: type[SmoothQuantConfig]

    def plan(self, ctx: SchemeContext) -> Plan:
        base = ctx.calibrated()
        sites, shared = smoothing_sites(ctx.prepared)
        absmax = channel_absmax(ctx, ctx.prepared, [s.tensor for s in sites])
        weights = weight_row_absmax(ctx.prepared, sites)

        def smoothed(alpha: float) -> tuple[Plan, dict[SmoothSite, np.ndarray]]:
            scales = {s: smoothing_scales(absmax[s.tensor], weights[s], alpha) for s in sites}
            model = smooth(ctx.prepared, scales)
            entries = {**base, **calibrate_new_tensors(ctx, model, set(base))}
            plan = Plan(model, activation_ranges(entries), weights=True, metadata={TARGET_KEY: "cpu"})
            return cpu_plan(plan), scales

        if ctx.config.alpha == "auto":
            alpha, (plan, scales), search = _search(ctx, smoothed)
        else:
            alpha, search = ctx.config.alpha, []
            plan, scales = smoothed(alpha)
        return replace(plan, notes=_notes(ctx, alpha, absmax, scales, shared) + search)


def _search(ctx: SchemeContext, smoothed) -> tuple[float, tuple, list[str]]:
    """The grid's alpha whose model output is closest to FP32 (SQNR) on the calibration sequences.

    Candidates are compared unfused (the fusion is an exact rewrite of the QDQ graph, tested in
    ``test_cpu_target``), so each costs a replay, ORT's quantizer and one pass over the sequences.
    """
    feeds = calibration_feeds(ctx.prepared, ctx.ranges)
    reference = logits_on(ctx.prepared, feeds)
    scores, best = {}, None
    for alpha in tqdm(ALPHA_GRID, desc="smoothquant alpha", unit="alpha", disable=None):
        candidate = smoothed(alpha)
        scores[alpha] = sqnr_db(reference, logits_on(insert_qdq(replace(candidate[0], fuse_cpu=False)), feeds))
        if best is None or scores[alpha] > scores[best[0]]:
            best = (alpha, candidate)
    tried = ", ".join(f"{a:g} {db:.1f} dB" for a, db in scores.items())
    note = f"alpha auto: chose {best[0]:g} (output SQNR vs FP32 on {len(reference)} calibration sequences: {tried})"
    return best[0], best[1], [note]


def _spread(absmax: np.ndarray) -> float:
    """Widest channel over the median channel: how many 8-bit levels a per-tensor grid loses to outliers."""
    return float(absmax.max() / max(np.median(absmax), 1e-12))


def _notes(
    ctx: SchemeContext, alpha: float, absmax: dict[str, np.ndarray], scales: dict[SmoothSite, np.ndarray], shared: list
) -> list[str]:
    """What smoothing did to the inputs' outliers, and what it left alone."""
    notes = [f"SmoothQuant alpha={alpha:g}: {len(scales)} MatMul inputs smoothed (x/s before the MatMuls, s into W)"]
    if scales:
        before = {s.tensor: _spread(absmax[s.tensor]) for s in scales}
        after = {s.tensor: _spread(absmax[s.tensor] / f) for s, f in scales.items()}
        worst = max(before, key=before.get)
        name = ctx.roles.role_of().get(worst, worst)
        notes.append(
            f"widest / median channel of the inputs: median {np.median(list(before.values())):.1f} -> "
            f"{np.median(list(after.values())):.1f}; worst {before[worst]:.1f} -> {after[worst]:.1f} ({name})"
        )
    if shared:
        notes.append(f"left {len(shared)} inputs unsmoothed: their MatMul weights are shared with other MatMuls")
    return notes


SMOOTH_SCHEMES = (SmoothQuantScheme(SmoothQuantConfig),)
