"""The ranges file: calibrated activation ranges, keyed by tensor and role, versioned.

One JSON document::

    {"format": "qonnx.ranges", "version": 1,
     "model": {"fingerprint": ..., "source": ..., "num_layers": ...},
     "calibration": {"estimator": ..., "num_sequences": ..., "seed": ..., ...},
     "tensors": {"<tensor>": {"role": "layer.0.ffn.output" | null, "min": f, "max": f}},
     "per_channel": {"<role>": {"tensor": ..., "min": [...], "max": [...]}}}

``per_channel`` holds per-embedding-dimension statistics of residual-stream roles
(PEG's range-based permutation needs them) and per-unit statistics of the GELU
outputs (PEG's intermediate groups). The file can also be written in
ONNX Runtime's calibration-cache format so users of its quantizer reuse our ranges.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.files import atomic_output, read_json_object

FORMAT = "qonnx.ranges"
VERSION = 1


def model_fingerprint(model: onnx.ModelProto) -> str:
    """A hash of the graph structure and weights: ranges only fit the model they came from."""
    h = hashlib.sha256()
    for node in model.graph.node:
        h.update(f"{node.op_type}|{','.join(node.input)}|{','.join(node.output)}\n".encode())
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        h.update(init.name.encode())
        h.update(init.raw_data or onnx.numpy_helper.to_array(init).tobytes())
    return h.hexdigest()[:16]


@dataclass
class RangeTable:
    """Ranges per tensor (min, max) with role names, plus the run's settings."""

    model: dict
    calibration: dict
    tensors: dict[str, dict] = field(default_factory=dict)
    per_channel: dict[str, dict] = field(default_factory=dict)

    def range(self, tensor: str) -> tuple[float, float]:
        entry = self.tensors[tensor]
        return entry["min"], entry["max"]

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "calibration": self.calibration,
            "tensors": self.tensors,
            "per_channel": self.per_channel,
        }

    def save(self, path: str | Path, *, inputs: tuple = ()) -> None:
        with atomic_output(path, inputs=inputs) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> RangeTable:
        data = read_json_object(path, "ranges file", "create one with `qonnx calibrate MODEL -o ranges.json`")
        if data.get("format") != FORMAT:
            raise UsageError(f"{path} is not a qonnx ranges file; create one with `qonnx calibrate`")
        if data.get("version") != VERSION:
            raise UsageError(
                f"{path} has ranges format version {data.get('version')}, this qonnx reads {VERSION}; re-run `qonnx calibrate`"
            )
        return cls(data["model"], data["calibration"], data["tensors"], data.get("per_channel", {}))

    def fits(self, model: onnx.ModelProto) -> bool:
        """Whether these ranges were calibrated on ``model`` (same graph and weights)."""
        return self.model.get("fingerprint") == model_fingerprint(model)

    def check_fits(self, model: onnx.ModelProto, needed: list[str], path: str | Path = "ranges") -> None:
        """Refuse ranges from another model, or ranges that lack tensors the scheme quantizes."""
        if not self.fits(model):
            raise UsageError(
                f"{path} was calibrated on another model ({self.model.get('source')}); re-run `qonnx calibrate` on this one"
            )
        missing = [t for t in needed if t not in self.tensors]
        if missing:
            raise UsageError(
                f"{path} lacks ranges for {len(missing)} tensors (e.g. {missing[0]}); re-run `qonnx calibrate` with this qonnx version"
            )

    def save_ort_cache(self, path: str | Path) -> None:
        """Write ONNX Runtime's calibration-cache JSON (``quantize_static(calibration_cache_path=...)``)."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data

        data = {t: (np.float32(e["min"]), np.float32(e["max"])) for t, e in self.tensors.items()}
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)
