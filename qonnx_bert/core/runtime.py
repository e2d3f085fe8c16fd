"""ONNX Runtime sessions as qonnx runs them."""

from __future__ import annotations

import onnx
import onnxruntime as ort


def cpu_session(model: onnx.ModelProto, threads: int | None = None, *, fused: bool = True) -> ort.InferenceSession:
    """A CPU-provider session with the default (full) graph optimizations: integer kernels fused.

    ``fused=False`` turns every graph optimization off: each QDQ unit then runs as
    written, DequantizeLinear -> float op -> QuantizeLinear, the QDQ graph's own
    arithmetic rather than an integer kernel's.
    """
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if not fused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
