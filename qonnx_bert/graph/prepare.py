"""Make an exported encoder quantizable: a finite additive attention mask.

Transformers fills masked attention positions with ``finfo(float32).min``
(-3.4e38). Any 8- or 16-bit grid that holds that value has no resolution left
for anything else, and histogram calibrators fail on it ("Too many bins for
data range"). Softmax gives exactly the same probabilities for any fill far
below the scores, so the fill becomes ``MASK_FILL``. The quantized softmax input
then clamps masked positions to the bottom of its grid (see ``schemes``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

MASK_FILL = -1.0e4
_HUGE_NEGATIVE = -1.0e30


def finite_attention_mask(model: onnx.ModelProto) -> int:
    """Replace huge negative float constants by ``MASK_FILL`` in place; returns how many."""
    changed = 0
    for init in model.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        value = numpy_helper.to_array(init)
        if value.size and value.size <= 16 and np.all(value < _HUGE_NEGATIVE):
            init.CopyFrom(numpy_helper.from_array(np.full_like(value, MASK_FILL), init.name))
            changed += 1
    return changed


def prepare(model: onnx.ModelProto, *, in_place: bool = False) -> onnx.ModelProto:
    """A prepared copy of ``model`` (``model`` itself, edited, with ``in_place``): what calibration and QDQ
    insertion both work on."""
    out = model if in_place else onnx.ModelProto()
    if not in_place:
        out.CopyFrom(model)
    finite_attention_mask(out)
    return out
