"""``smoothquant``: W8A8 for the CPU provider with SmoothQuant's per-channel smoothing of MatMul inputs.

Beyond the paper (Xiao et al. 2023; what ONNX Runtime's Neural Compressor, AMD Quark and
NVIDIA ModelOpt offer): each MatMul input's per-channel absolute maxima (replayed from the
ranges file's sequences) set the factors of ``passes.smooth``; the smoothed inputs are
calibrated on the same sequences with the file's estimator; then the plan is W8A8's CPU
lowering (``passes.plan.cpu_plan``): uint8 MatMul inputs, int8 per-channel weights, the
rest float. The FP32 graph it quantizes equals the original up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qonnx_bert.core.modelinfo import TARGET_KEY
from qonnx_bert.passes.plan import Plan, activation_ranges, cpu_plan
from qonnx_bert.passes.smooth import SmoothSite, smooth, smoothing_scales, smoothing_sites, weight_row_absmax
from qonnx_bert.quantize.config import SmoothQuantConfig
from qonnx_bert.quantize.schemes.context import SchemeContext
from qonnx_bert.quantize.schemes.replay import calibrate_new_tensors, channel_absmax


@dataclass(frozen=True)
class SmoothQuantScheme:
    config: type[SmoothQuantConfig]

    def plan(self, ctx: SchemeContext) -> Plan:
        alpha = ctx.config.alpha
        base = ctx.calibrated()
        sites, shared = smoothing_sites(ctx.prepared)
        absmax = channel_absmax(ctx, ctx.prepared, [s.tensor for s in sites])
        scales = {s: smoothing_scales(absmax[s.tensor], weight_row_absmax(ctx.prepared, s), alpha) for s in sites}
        smoothed = smooth(ctx.prepared, scales)
        entries = {**base, **calibrate_new_tensors(ctx, smoothed, set(base))}
        plan = Plan(
            smoothed,
            activation_ranges(entries),
            weights=True,
            notes=_notes(ctx, alpha, absmax, scales, shared),
            metadata={TARGET_KEY: "cpu"},
        )
        return cpu_plan(plan)


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
