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
    _prepared: onnx.ModelProto | None  # ``prepared``; None once a scheme took it (``take_prepared``)
    roles: RoleMap
    ranges: RangeTable | None
    path: str = "model"

    @property
    def prepared(self) -> onnx.ModelProto:
        if self._prepared is None:
            raise RuntimeError("qonnx bug: the prepared model was read after a scheme took it (take_prepared)")
        return self._prepared

    def take_prepared(self) -> onnx.ModelProto:
        """The prepared model, no longer held here: a scheme that rewrites it lets it go as it builds its own."""
        model, self._prepared = self.prepared, None
        return model

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
