"""Quantization schemes: which tensors get which quantization, by role.

A scheme is planning only; ``passes.qdq`` applies the plan. The paper's PTQ
setup: symmetric per-tensor int8 weights, asymmetric per-tensor uint8
activations, all activations quantized, static ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

from qonnx_bert.errors import UsageError

# Masked attention positions are clamped to the bottom of the softmax-input grid.
# Keeping that bottom at least this far below the top makes a masked key's
# softmax weight at most exp(-20) ~ 2e-9 of the row's largest.
SOFTMAX_MASK_MARGIN = 20.0


@dataclass(frozen=True)
class Scheme:
    """What a scheme quantizes; bit-widths are the paper's W8A8 baseline."""

    name: str
    weights: bool
    activations: bool
    summary: str


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("w8a8", True, True, "int8 symmetric weights, uint8 asymmetric activations, all per-tensor"),
        Scheme("w8a32", True, False, "int8 symmetric per-tensor weights only; activations stay float"),
        Scheme("w32a8", False, True, "uint8 asymmetric per-tensor activations only; weights stay float"),
    )
}


def get_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise UsageError(f"unknown scheme {name!r}; choose one of: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def activation_ranges(tensors: dict[str, dict]) -> dict[str, tuple[float, float]]:
    """Calibrated ranges turned into the ranges the quantizer uses.

    Every range includes 0 (so zero padding and ReLU-like zeros are exact), and a
    softmax input keeps ``SOFTMAX_MASK_MARGIN`` below its maximum so masked
    positions stay negligible after clamping.
    """
    out = {}
    for name, entry in tensors.items():
        lo, hi = min(entry["min"], 0.0), max(entry["max"], 0.0)
        role = entry.get("role") or ""
        if role.endswith("attention.softmax_input"):
            lo = min(lo, hi - SOFTMAX_MASK_MARGIN)
        out[name] = (lo, hi)
    return out
