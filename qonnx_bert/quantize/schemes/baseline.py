"""The paper's per-tensor baselines: W8A8, weights only (W8A32), activations only (W32A8).

Symmetric per-tensor int8 weights, asymmetric per-tensor uint8 activations,
all activations quantized, static ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

from qonnx_bert.passes.plan import Plan, activation_ranges
from qonnx_bert.quantize.config import SchemeConfig, W8A8Config, W8A32Config, W32A8Config
from qonnx_bert.quantize.schemes.context import SchemeContext


@dataclass(frozen=True)
class Baseline:
    config: type[SchemeConfig]
    weights: bool
    activations: bool

    def plan(self, ctx: SchemeContext) -> Plan:
        ranges = activation_ranges(ctx.calibrated()) if self.activations else None
        return Plan(ctx.prepared, ranges, weights=self.weights)


W8A8 = Baseline(W8A8Config, True, True)
BASELINES = (W8A8, Baseline(W8A32Config, True, False), Baseline(W32A8Config, False, True))
