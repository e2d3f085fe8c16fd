"""ONNX Runtime CPU sessions as qonnx runs them: one builder for every stage."""

from __future__ import annotations

import os
import tempfile

import onnx
import onnxruntime as ort

from qonnx_bert.core.files import too_large


def cpu_session(
    model: onnx.ModelProto,
    threads: int | None = None,
    *,
    fused: bool = True,
    arena: bool = True,
    spinning: bool = True,
    quiet: bool = False,
    optimized_path: str | None = None,
) -> ort.InferenceSession:
    """A CPU-provider session, by default with the full graph optimizations: integer kernels fused.

    ``fused=False`` turns every graph optimization off: each tensor keeps its exported
    name, and each QDQ unit runs as written (DequantizeLinear -> float op ->
    QuantizeLinear), the QDQ graph's own arithmetic rather than an integer kernel's.
    ``arena=False`` gives freed activations back to the system (bounded calibration
    memory); ``spinning=False`` idles the worker threads between runs (NumPy work
    interleaved); ``optimized_path`` saves the graph the provider runs.
    """
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if not fused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = arena
    options.enable_mem_pattern = arena  # without the arena, no activation plan cached per input shape either
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if quiet:
        options.log_severity_level = 3
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    if too_large(model):
        return _session_from_files(model, options)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _session_from_files(model: onnx.ModelProto, options: ort.SessionOptions) -> ort.InferenceSession:
    """A session of a model over protobuf's 2 GB: a copy written with external data, read by ORT, removed."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # saving with external data moves the weights out of the proto it is given
    with tempfile.TemporaryDirectory(prefix="qonnx.") as folder:
        path = os.path.join(folder, "model.onnx")
        onnx.save(copy, path, save_as_external_data=True, location="model.onnx.data")
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def exposing_session(model: onnx.ModelProto, names: list[str]) -> ort.InferenceSession:
    """A CPU session that returns ``names`` too; no graph optimizations, so every tensor keeps its name."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    existing = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in existing)
    return cpu_session(exposed, fused=False)
