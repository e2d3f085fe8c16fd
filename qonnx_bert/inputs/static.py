"""The fixed-shape twin of a dynamic encoder file, for runtimes that need static shapes (QNN HTP).

The graph inputs get fixed dims and ``onnxscript``'s optimizer folds what they make constant
(the Shape/Range/Expand chains over batch and length; the mask's GatherND, then constant-index,
becomes a Reshape/Gather): the graph torch.onnx's static export gives, from the ONNX file alone,
so a user's own file, the demo's dynamic export or a QDQ model that `qonnx qat` wrote needs no
second PyTorch export. Checked here against the dynamic model on the CPU provider.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import onnx_ir as ir

from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.modelinfo import INFO_KEY, ModelInfo, static_shape
from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.graph.static_indexing import constant_gather_nd

MAX_ABS_DIFF = 1e-4  # as export's check against PyTorch: float reassociation only, no change of computation


def static_twin(model: onnx.ModelProto, shape: tuple[int, int], path: str = "model") -> onnx.ModelProto:
    """``model`` with every graph input fixed to ``shape`` (batch, length) and the shape arithmetic folded."""
    from onnxscript import optimizer

    fixed = static_shape(model)
    if fixed is not None:
        raise UsageError(f"{path} already has the fixed shape {fixed[0]},{fixed[1]}; export the dynamic model again")
    irm = ir.from_proto(model)  # shares the weights; folding adds tensors, it edits none of ``model``'s
    for value in irm.graph.inputs:
        value.shape = ir.Shape(list(shape))
    optimizer.optimize(irm)
    twin = ir.to_proto(irm)
    constant_gather_nd(twin)  # the folded mask indexing: a written QDQ file's twin must pass the HTP check too
    _record_shape(twin, shape)
    diff = _max_output_diff(model, twin, shape, path)
    if diff > MAX_ABS_DIFF:
        raise UsageError(f"{path}: the {shape[0]},{shape[1]} twin differs from the model by {diff:.2e}; report it")
    return twin


def _record_shape(model: onnx.ModelProto, shape: tuple[int, int]) -> None:
    for prop in model.metadata_props:
        if prop.key == INFO_KEY:
            info = ModelInfo.from_json(prop.value)
            prop.value = replace(info, static_shape=shape, max_length=shape[1]).to_json()


def _max_output_diff(model: onnx.ModelProto, twin: onnx.ModelProto, shape: tuple[int, int], path: str) -> float:
    """Both models on the same ids at ``shape`` (the last quarter padded, so the mask path is exercised)."""
    rng = np.random.default_rng(0)
    mask = np.ones(shape, np.int64)
    mask[:, shape[1] - shape[1] // 4 :] = 0
    values = {"input_ids": rng.integers(1000, 2000, shape), "attention_mask": mask, "token_type_ids": 0 * mask}
    feeds = {i.name: values[i.name].astype(np.int64) for i in model.graph.input}
    try:
        expected = cpu_session(model).run(None, feeds)
        got = cpu_session(twin).run(None, feeds)
    except Exception as err:  # ORT's own error types; e.g. a length past the position table
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise UsageError(
            f"{path} does not run at {shape[0]},{shape[1]} ({first}); choose another --static-shape"
        ) from None
    return max(float(np.max(np.abs(a - b))) for a, b in zip(expected, got, strict=True))
