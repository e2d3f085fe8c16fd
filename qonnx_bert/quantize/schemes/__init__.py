"""Quantization schemes, by name. Each builds a ``Plan``; ``passes.qdq`` applies it.

A scheme is any object with ``name``, ``summary`` and ``plan(ctx) -> Plan``.
"""

from __future__ import annotations

from qonnx_bert.core.errors import UsageError
from qonnx_bert.passes.plan import SOFTMAX_MASK_MARGIN, Plan, activation_ranges
from qonnx_bert.quantize.schemes.baseline import BASELINES
from qonnx_bert.quantize.schemes.context import SchemeContext
from qonnx_bert.quantize.schemes.mixed import MIXED_SCHEMES, with_int16
from qonnx_bert.quantize.schemes.peg import PEG_SCHEMES

SCHEMES = {s.name: s for s in (*map(with_int16, (*BASELINES, *PEG_SCHEMES)), *MIXED_SCHEMES)}


def get_scheme(name: str):
    if name not in SCHEMES:
        raise UsageError(f"unknown scheme {name!r}; choose one of: {', '.join(SCHEMES)}")
    return SCHEMES[name]


__all__ = ["SCHEMES", "SOFTMAX_MASK_MARGIN", "Plan", "SchemeContext", "activation_ranges", "get_scheme"]
