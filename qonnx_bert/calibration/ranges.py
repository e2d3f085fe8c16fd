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

Reading checks every entry: a missing key or a value of the wrong type names the
file, the tensor and the key; NaN, ±inf and min > max are refused naming the
tensor. A degenerate range (min == max, a tensor that was constant on every
calibration sequence) is widened to ``MIN_RANGE`` around its value, with a warning:
ONNX Runtime would otherwise give a [0, 0] range the scale 1.0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.files import atomic_output, read_json_object, require
from qonnx_bert.inputs.sequences import Sequences

logger = logging.getLogger(__name__)

FORMAT = "qonnx.ranges"
VERSION = 1
MIN_RANGE = 1e-6  # the span a min == max range is widened to
MAX_ABS = float(np.finfo(np.float32).max) / 2  # beyond it, max - min and so the float32 scale overflow


def model_fingerprint(model: onnx.ModelProto, weights: dict[str, np.ndarray] | None = None) -> str:
    """A hash of the graph structure and weights: ranges only fit the model they came from.

    ``weights``: values of initializers that ``model`` holds as stubs (a ``SplitModel``'s).
    """
    h = hashlib.sha256()
    for node in model.graph.node:
        h.update(f"{node.op_type}|{','.join(node.input)}|{','.join(node.output)}\n".encode())
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        h.update(init.name.encode())
        if weights is not None and init.name in weights:
            h.update(np.ascontiguousarray(weights[init.name]).data)
        else:
            h.update(init.raw_data or onnx.numpy_helper.to_array(init).tobytes())
    return h.hexdigest()[:16]


def _checked_range(entry: object, where: str) -> dict:
    """One ``tensors`` entry: an object with finite numbers ``min`` <= ``max``."""
    if not isinstance(entry, dict):
        raise UsageError(f"{where} must be an object with min and max, got {json.dumps(entry)[:40]}")
    low, high = (require(entry, k, (int, float), where) for k in ("min", "max"))
    if entry.get("role") is not None:
        require(entry, "role", str, where)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise UsageError(f"{where} has a non-finite range [{low}, {high}]; re-run `qonnx calibrate`")
    if max(abs(low), abs(high)) > MAX_ABS:
        raise UsageError(
            f"{where} has a range [{low}, {high}] beyond float32 (|value| > {MAX_ABS:.3g}); re-run `qonnx calibrate`"
        )
    if low > high:
        raise UsageError(f"{where} has min {low} > max {high}; re-run `qonnx calibrate`")
    return entry


def _checked_channels(entry: object, where: str) -> None:
    """One ``per_channel`` entry: ``tensor`` and equally long lists of finite ``min`` <= ``max``."""
    if not isinstance(entry, dict):
        raise UsageError(f"{where} must be an object with tensor, min and max, got {json.dumps(entry)[:40]}")
    require(entry, "tensor", str, where)
    low, high = (require(entry, k, list, where) for k in ("min", "max"))
    if len(low) != len(high) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in low + high):
        raise UsageError(f"{where}: min and max must be lists of numbers of the same length")
    lo, hi = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (lo <= hi).all()) or np.abs([lo, hi]).max() > MAX_ABS:
        raise UsageError(
            f"{where} has a non-finite, inverted (min > max) or beyond-float32 channel range; re-run `qonnx calibrate`"
        )


def _widen_degenerate(tensors: dict[str, dict], path: str | Path) -> None:
    """min == max (constant on every calibration sequence) becomes a span of ``MIN_RANGE`` centred on the value.

    A warning names them, except tensors that were 0 throughout (an unmasked attention
    mask): any scale represents 0 exactly, so nothing about them changes.
    """
    flat = [t for t, e in tensors.items() if e["max"] - e["min"] < MIN_RANGE]
    for t in flat:
        centre = (tensors[t]["min"] + tensors[t]["max"]) / 2
        tensors[t] = {**tensors[t], "min": centre - MIN_RANGE / 2, "max": centre + MIN_RANGE / 2}
    flat = [t for t in flat if tensors[t]["min"] + MIN_RANGE / 2 != 0]
    if flat:
        logger.warning(
            "%s: %d tensors have min == max (e.g. %s); widened to a span of %g", path, len(flat), flat[0], MIN_RANGE
        )


@dataclass
class RangeTable:
    """Ranges per tensor (min, max) with role names, plus the run's settings."""

    model: dict
    calibration: dict
    tensors: dict[str, dict] = field(default_factory=dict)
    per_channel: dict[str, dict] = field(default_factory=dict)
    origin: str = field(default="the ranges", compare=False, repr=False)  # how errors name it: its path once loaded

    def range(self, tensor: str) -> tuple[float, float]:
        entry = self.tensors[tensor]
        return entry["min"], entry["max"]

    def sequences(self) -> Sequences:
        """The calibration sequences stored with the ranges, for passes that replay them."""
        if not self.calibration.get("sequences"):
            raise UsageError("ranges file holds no calibration sequences; re-run `qonnx calibrate` (this version)")
        cal = self.calibration
        return Sequences.from_pairs(cal["sequences"], cal.get("source", "ranges file"), cal.get("seed", 0))

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "calibration": self.calibration,
            "tensors": self.tensors,
            "per_channel": self.per_channel,
        }

    def write(self, path: str | Path) -> None:
        """Write the JSON to ``path`` as it is (the caller's ``atomic_outputs`` makes it whole or absent)."""
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    def save(self, path: str | Path, *, inputs: tuple = ()) -> None:
        with atomic_output(path, inputs=inputs) as tmp:
            self.write(tmp)

    @classmethod
    def load(cls, path: str | Path) -> RangeTable:
        data = read_json_object(path, "ranges file", "create one with `qonnx calibrate MODEL -o ranges.json`")
        if data.get("format") != FORMAT:
            raise UsageError(f"{path} is not a qonnx ranges file; create one with `qonnx calibrate`")
        if data.get("version") != VERSION:
            raise UsageError(
                f"{path} has ranges format version {data.get('version')}, this qonnx reads {VERSION}; "
                "re-run `qonnx calibrate`"
            )
        model, calibration = require(data, "model", dict, str(path)), require(data, "calibration", dict, str(path))
        tensors = {
            t: _checked_range(e, f"{path}: tensor {t!r}") for t, e in require(data, "tensors", dict, str(path)).items()
        }
        per_channel = data.get("per_channel", {})
        if not isinstance(per_channel, dict):
            raise UsageError(f"{path}: key 'per_channel' must be an object, got {json.dumps(per_channel)[:40]}")
        for role, entry in per_channel.items():
            _checked_channels(entry, f"{path}: per_channel {role!r}")
        _widen_degenerate(tensors, path)
        return cls(model, calibration, tensors, per_channel, origin=str(path))

    def fits(self, model: onnx.ModelProto | str) -> bool:
        """Whether these ranges were calibrated on ``model`` (same graph and weights; or its fingerprint)."""
        return self.model.get("fingerprint") == (model if isinstance(model, str) else model_fingerprint(model))

    def check_fits(self, model: onnx.ModelProto | str, needed: list[str], path: str | Path | None = None) -> None:
        """Refuse ranges from another model, or ranges that lack tensors the scheme quantizes."""
        path = self.origin if path is None else path
        if not self.fits(model):
            raise UsageError(
                f"{path} was calibrated on another model ({self.model.get('source')}); "
                "re-run `qonnx calibrate` on this one"
            )
        missing = [t for t in needed if t not in self.tensors]
        if missing:
            raise UsageError(
                f"{path} lacks ranges for {len(missing)} tensors (e.g. {missing[0]}); "
                "re-run `qonnx calibrate` with this qonnx version"
            )

    def save_ort_cache(self, path: str | Path) -> None:
        """Write ONNX Runtime's calibration-cache JSON (``quantize_static(calibration_cache_path=...)``)."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data

        data = {t: (np.float32(e["min"]), np.float32(e["max"])) for t, e in self.tensors.items()}
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)
