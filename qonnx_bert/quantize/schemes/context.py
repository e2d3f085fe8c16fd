"""What every scheme gets to plan with: the prepared graph, its roles, the ranges, options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx

from qonnx_bert.calibration.ranges import RangeTable
from qonnx_bert.calibration.tensors import quantizable_tensors
from qonnx_bert.core.errors import UsageError
from qonnx_bert.graph.roles import RoleMap


@dataclass
class SchemeContext:
    """Inputs of ``Scheme.plan``. ``options`` holds the scheme's own settings (CLI flags)."""

    scheme: str
    original: onnx.ModelProto
    prepared: onnx.ModelProto
    roles: RoleMap
    ranges: RangeTable | None
    options: dict[str, Any] = field(default_factory=dict)
    path: str = "model"

    def require_ranges(self) -> RangeTable:
        if self.ranges is None:
            raise UsageError(f"scheme {self.scheme} quantizes activations: pass --ranges FILE from `qonnx calibrate`")
        return self.ranges

    def calibrated(self) -> dict[str, dict]:
        """Calibrated entries of every activation the quantizer touches in the prepared graph."""
        ranges = self.require_ranges()
        needed = [t.name for t in quantizable_tensors(self.prepared)]
        ranges.check_fits(self.original, needed)
        return {t: ranges.tensors[t] for t in needed}
