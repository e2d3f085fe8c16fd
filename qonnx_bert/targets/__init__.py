"""Deployment targets: will a QDQ model run fully quantized there, and how accurately?

``qnn-htp`` is Qualcomm's Hexagon NPU through the ``onnxruntime-qnn`` plugin
(validated, compiled and emulated on x86-64 Linux, no device needed); ``cpu`` is
ONNX Runtime's CPU provider. Each target's check returns a ``CheckReport``.
"""

from __future__ import annotations

from qonnx_bert.core.errors import UsageError
from qonnx_bert.targets.findings import CheckReport, Finding

EPS = ("qnn-htp", "cpu")


def require_ep(name: str) -> str:
    """The EP name, or a one-line error listing the known ones."""
    if name not in EPS:
        raise UsageError(f"unknown execution provider {name!r}; choose one of: {', '.join(EPS)}")
    return name


__all__ = ["EPS", "CheckReport", "Finding", "require_ep"]
