"""Which elements of the FP32 model's weights each weight of a scheme's float model is.

PEG folds a permutation into the weights and splits the FFN's (``passes/permute_stream.py``,
``passes/peg_split_ffn.py``): its float model holds gathers of the FP32 weights, renamed. QAT
trains the FP32 weights (the checkpoint's parameters) through those gathers, so the trained
model is an ordinary checkpoint that ``qonnx quantize --scheme peg`` lowers again. Found by
planning the scheme on two tagged copies of the FP32 model, not by re-deriving its permutation
and groups: in one every weight's elements are numbered, in the other every weight is filled
with its own number; whatever the scheme does by indexing, the tags read back, and the real
values are then checked against the result.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from qonnx_bert.core.errors import UsageError

View = tuple[str, np.ndarray | None]  # (FP32 initializer, flat indices into it; None: the whole weight as it is)
_TAGS = 2**24  # float32 holds every multiple of 2**-24 below 1 exactly


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {
        i.name: numpy_helper.to_array(i)
        for i in model.graph.initializer
        if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2
    }


def _tagged(fp32: onnx.ModelProto, tags: dict[str, np.ndarray]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(fp32)
    for init in out.graph.initializer:
        if init.name in tags:
            init.CopyFrom(numpy_helper.from_array(tags[init.name], init.name))
    return out


def weight_views(
    fp32: onnx.ModelProto, floats: onnx.ModelProto, names: list[str], plan: Callable[[onnx.ModelProto], onnx.ModelProto]
) -> dict[str, View]:
    """For each weight ``names`` of ``floats`` (the scheme's float model of ``fp32``), its ``View``.

    ``plan`` gives the scheme's float model of another model of the same graph (``scheme_floats``).
    """
    bases, planned = _weights(fp32), _weights(floats)
    if all(n in bases and np.array_equal(bases[n], planned[n]) for n in names):
        return {n: (n, None) for n in names}  # the scheme kept the weights as they are (all but PEG)
    too_big = [n for n, w in bases.items() if w.size >= _TAGS]
    if too_big:
        raise UsageError(f"{too_big[0]} has {bases[too_big[0]].size} elements: QAT maps at most {_TAGS - 1} per weight")
    ids = {n: i + 1 for i, n in enumerate(bases)}
    numbered = _weights(
        plan(
            _tagged(
                fp32,
                {n: ((np.arange(w.size) + 1) / _TAGS).reshape(w.shape).astype(np.float32) for n, w in bases.items()},
            )
        )
    )
    owners = _weights(plan(_tagged(fp32, {n: np.full(w.shape, ids[n], np.float32) for n, w in bases.items()})))
    names_of = {i: n for n, i in ids.items()}
    views = {}
    for name in names:
        owner = np.unique(owners[name])
        if len(owner) != 1 or int(owner[0]) not in names_of:
            raise RuntimeError(f"the scheme's weight {name} mixes FP32 weights; QAT cannot train it, report this model")
        source = names_of[int(owner[0])]
        index = np.rint(numbered[name].astype(np.float64) * _TAGS).astype(np.int64) - 1
        if not np.array_equal(bases[source].reshape(-1)[index], planned[name]):
            raise RuntimeError(f"the scheme's weight {name} is not a gather of {source}; report this model")
        views[name] = (source, index)
    return views
