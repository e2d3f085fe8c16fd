"""Shape inference as every stage uses it: lenient, and all value infos in one list."""

from __future__ import annotations

import onnx


def value_infos(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs, inferred intermediates and outputs (``strict_mode`` off: unknown shapes stay unknown)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    return [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
