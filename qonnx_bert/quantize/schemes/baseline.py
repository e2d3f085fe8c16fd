"""The paper's per-tensor baselines: W8A8, weights only (W8A32), activations only (W32A8).

Symmetric per-tensor int8 weights, asymmetric per-tensor uint8 activations,
all activations quantized, static ranges (W8A8 ``target=cpu``: only MatMul inputs).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from qonnx_bert.core.modelinfo import TARGET_KEY
from qonnx_bert.passes.plan import Plan, activation_ranges, cpu_plan
from qonnx_bert.quantize.config import SchemeConfig, Target, W8A8Config, W8A32Config, W32A8Config
from qonnx_bert.quantize.schemes.context import SchemeContext


@dataclass(frozen=True)
class Baseline:
    config: type[SchemeConfig]
    weights: bool
    activations: bool

    def plan(self, ctx: SchemeContext) -> Plan:
        ranges = activation_ranges(ctx.calibrated()) if self.activations else None
        plan = Plan(ctx.prepared, ranges, weights=self.weights)
        if getattr(ctx.config, "target", Target.PORTABLE) == Target.CPU:
            return replace(cpu_plan(plan), metadata={TARGET_KEY: "cpu"})
        return plan


W8A8 = Baseline(W8A8Config, True, True)
BASELINES = (W8A8, Baseline(W8A32Config, True, False), Baseline(W32A8Config, False, True))
