"""What every scheme gets to plan with: the prepared graph, its roles, the ranges, its typed config."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from qonnx_bert.calibration.ranges import RangeTable
from qonnx_bert.calibration.tensors import quantizable_tensors
from qonnx_bert.core.errors import UsageError
from qonnx_bert.graph.roles import RoleMap
from qonnx_bert.quantize.config import SchemeConfig


@dataclass
class SchemeContext:
    """Inputs of ``Scheme.plan``."""

    config: SchemeConfig
    fingerprint: str  # the FP32 model's (``model_fingerprint``): ranges and selections must be made for it
    prepared: onnx.ModelProto
    roles: RoleMap
    ranges: RangeTable | None
    path: str = "model"

    @property
    def scheme(self) -> str:
        return self.config.scheme

    def require_ranges(self) -> RangeTable:
        if self.ranges is None:
            raise UsageError(f"scheme {self.scheme} quantizes activations: pass --ranges FILE from `qonnx calibrate`")
        return self.ranges

    def calibrated(self) -> dict[str, dict]:
        """Calibrated entries of every activation the quantizer touches in the prepared graph."""
        ranges = self.require_ranges()
        needed = [t.name for t in quantizable_tensors(self.prepared)]
        ranges.check_fits(self.fingerprint, needed)
        return {t: ranges.tensors[t] for t in needed}
