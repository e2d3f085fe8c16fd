"""ONNX Runtime sessions as qonnx runs them."""

from __future__ import annotations

import onnx
import onnxruntime as ort


def cpu_session(model: onnx.ModelProto, threads: int | None = None) -> ort.InferenceSession:
    """A CPU-provider session with the default (full) graph optimizations: integer kernels fused."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
