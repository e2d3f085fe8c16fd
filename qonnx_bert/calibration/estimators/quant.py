"""The integer grid a range maps to, as ONNX Runtime's QDQ ops will apply it.

Asymmetric: unsigned ``bits`` grid, range widened to include 0 and the zero point rounded
to an integer (so 0 is exact and the grid may shift by up to half a step). Symmetric:
restricted signed grid ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``, zero point 0. MSE
search and weight ranges measure error on this grid so they optimise what is deployed.
"""

from __future__ import annotations

import numpy as np


def check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an integer in [2, 16], got {bits!r}")
    return int(bits)


def grid(lo, hi, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(scale, clip_lo, clip_hi)``: step and the outermost grid points for range ``(lo, hi)``."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if symmetric:
        t = np.maximum(np.abs(lo), np.abs(hi))
        return t / (2 ** (bits - 1) - 1), -t, t
    qmax = 2**bits - 1
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    scale = (hi - lo) / qmax
    zero_point = np.clip(np.round(-lo / np.where(scale > 0, scale, 1.0)), 0, qmax)
    return scale, -zero_point * scale, (qmax - zero_point) * scale


def quant_dequant(x, lo, hi, bits: int, symmetric: bool) -> np.ndarray:
    """``x`` quantized to the grid of ``(lo, hi)`` and back (broadcasting)."""
    scale, clip_lo, clip_hi = grid(lo, hi, bits, symmetric)
    y = np.clip(x, clip_lo, clip_hi)
    return clip_lo + np.round((y - clip_lo) / np.where(scale > 0, scale, 1.0)) * scale
