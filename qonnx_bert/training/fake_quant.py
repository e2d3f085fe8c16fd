"""Fake quantization that computes what ONNX Runtime will deploy, with straight-through gradients.

Activation ranges are learned LSQ-style: each range is scaled by a learned factor
(``LearnedRange``), so the scale ``(max(hi, 0) - min(lo, 0)) / qmax`` follows it with its full
gradient through the quantize-dequantize (rounding passes gradients straight through, clamping
stops them), and the zero point, recomputed every step exactly as ONNX Runtime's
``compute_scale_zp`` does when the ranges file is quantized (``round(-rmin / scale)``, float64,
no gradient: it is an integer), stays the one the PTQ range gave. Rounding is ``torch.round``,
half to even, as ONNX ``QuantizeLinear``.
"""

from __future__ import annotations

import torch


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``QuantizeLinear``: integers (as floats) ``clamp(round(x / scale) + zero_point)``."""
    return torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    return (q - zero_point) * scale


class _FakeQuantize(torch.autograd.Function):
    """``dequantize(quantize(x))`` with the gradients of the two composed above, saving ``x`` alone.

    Composed from PyTorch ops, autograd keeps about three full-size tensors per quantizer for the
    backward pass, which took a PEG MiniLM QAT step past the memory of a 24 GB machine. Here
    ``x`` is kept and the rest recomputed: d/dx = 1 inside the grid (round passes straight
    through, clamping stops it), d/dscale = (q - zero_point) - x / scale inside and
    (q - zero_point) outside (LSQ); the zero point is an integer, without a gradient.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int):
        ctx.save_for_backward(x, scale, zero_point)
        ctx.bounds = (qmin, qmax)
        return (torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad):
        x, scale, zero_point = ctx.saved_tensors
        qmin, qmax = ctx.bounds
        v = x / scale
        unclamped = torch.round(v) + zero_point
        inside = (unclamped >= qmin) & (unclamped <= qmax)
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_scale = None
        if ctx.needs_input_grad[1]:
            q = torch.clamp(unclamped, qmin, qmax)
            local = (q - zero_point) - torch.where(inside, v, torch.zeros_like(v))
            grad_scale = (grad * local).sum_to_size(scale.shape)
        return grad_x, grad_scale, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``dequantize(quantize(x, ...), scale, zero_point)``: the same values and gradients, less memory."""
    return _FakeQuantize.apply(x, scale, zero_point, qmin, qmax)


def _double(x) -> torch.Tensor:
    return x.double() if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=torch.float64)


def asymmetric_scale_zero_point(lo, hi, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ONNX Runtime's ``compute_scale_zp`` for an unsigned grid: 0 in range, float64, scale stored as float32."""
    rmin = torch.clamp(_double(lo), max=0.0)
    rmax = torch.clamp(_double(hi), min=0.0)
    scale = torch.clamp((rmax - rmin) / qmax, min=torch.finfo(torch.float32).tiny)
    zero_point = torch.round(-rmin / scale).detach()
    return scale.float(), zero_point.float()


class LearnedRange(torch.nn.Module):
    """An asymmetric activation range ``(lo, hi) = (lo0, hi0) * exp(log_scale)``: the grid's scale is
    learned (LSQ) and its zero point stays the integer the PTQ range gave. LSQ's gradient reaches a
    range only through its scale (the zero point is an integer), so bounds learned apart got equal and
    opposite steps: a shrinking range lost as much on its short side as on its long one, and a short
    negative side was clipped away whole. The log domain makes Adam's steps relative, whatever the
    range's size (``QatConfig.range_lr``). Each quantizer it sets lays its own unsigned grid on it:
    mixed precision writes one tensor at 16 bits for one consumer and converts it to 8 bits for another."""

    def __init__(self, lo: float, hi: float) -> None:
        super().__init__()
        self.register_buffer("start", torch.tensor([float(lo), float(hi)], dtype=torch.float32))
        self.log_scale = torch.nn.Parameter(torch.zeros(()))  # zero: the start, exactly (exp(0) == 1)

    @property
    def lo(self) -> torch.Tensor:
        return self.start[0] * torch.exp(self.log_scale)

    @property
    def hi(self) -> torch.Tensor:
        return self.start[1] * torch.exp(self.log_scale)

    def scale_zero_point(self, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
        return asymmetric_scale_zero_point(self.lo, self.hi, qmax)

    def range(self) -> tuple[float, float]:
        """The range the grid spans, zero included, as ``scale_zero_point`` uses it."""
        return min(float(self.lo.detach()), 0.0), max(float(self.hi.detach()), 0.0)


def symmetric_weight(w: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """Symmetric weight fake quantization on a given (detached) scale: ``clamp(round(w / s)) * s``."""
    return torch.clamp(round_ste(w / scale), -qmax, qmax) * scale
