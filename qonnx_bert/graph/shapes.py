"""Shape inference as every stage uses it: lenient, all value infos in one list, and on a weightless copy."""

from __future__ import annotations

import onnx

from qonnx_bert.graph.weightless import weightless


def inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    """A weightless copy of ``model`` with every shape inference finds (``strict_mode`` off: unknown stays unknown).

    For reading shapes only: its large initializers are stubs (``graph.weightless``).
    """
    return onnx.shape_inference.infer_shapes(weightless(model), strict_mode=False)


def value_infos(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs, inferred intermediates and outputs."""
    found = inferred(model)
    return [*found.graph.input, *found.graph.value_info, *found.graph.output]
