"""The paper's per-tensor baselines: W8A8, weights only (W8A32), activations only (W32A8).

Symmetric per-tensor int8 weights, asymmetric per-tensor uint8 activations,
all activations quantized, static ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

from qonnx_bert.passes.plan import Plan, activation_ranges
from qonnx_bert.quantize.schemes.context import SchemeContext


@dataclass(frozen=True)
class Baseline:
    name: str
    weights: bool
    activations: bool
    summary: str

    def plan(self, ctx: SchemeContext) -> Plan:
        ranges = activation_ranges(ctx.calibrated()) if self.activations else None
        return Plan(ctx.prepared, ranges, weights=self.weights)


BASELINES = (
    Baseline("w8a8", True, True, "int8 symmetric weights, uint8 asymmetric activations, all per-tensor"),
    Baseline("w8a32", True, False, "int8 symmetric per-tensor weights only; activations stay float"),
    Baseline("w32a8", False, True, "uint8 asymmetric per-tensor activations only; weights stay float"),
)
