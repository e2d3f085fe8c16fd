"""Copies of a model without its weights: what shape inference, the version converter and
calibration's segments need, at the size of the graph instead of the size of the model.

``onnx.shape_inference`` and the version converter work on serialized bytes: a full model
costs its own size several times over there (and protobuf caps it at 2 GB); they read only
the type and dims of a large initializer, so it is passed as an external-data stub.
"""

from __future__ import annotations

import math

import onnx

STUB_LOCATION = "qonnx-weights-held-in-memory"  # never read: the stub's bytes live elsewhere
STUB_BYTES = 1024  # smaller initializers (shape constants, mask fills) are copied: passes read their values


def copy_message(src, dst) -> None:
    """``dst.CopyFrom(src)`` through bytes: protobuf arenas of ``src`` and ``dst`` stay apart."""
    dst.ParseFromString(src.SerializeToString())


def copy_fields(src, dst, skip: tuple[str, ...] = ()) -> None:
    """Every set field of ``src`` except ``skip`` into ``dst``, submessages copied through bytes."""
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        target = getattr(dst, fd.name)
        if hasattr(value, "extend") and fd.message_type is not None:
            for item in value:
                copy_message(item, target.add())
        elif hasattr(value, "extend"):
            target.extend(value)
        elif fd.message_type is not None:
            copy_message(value, target)
        else:
            setattr(dst, fd.name, value)


def stub(init: onnx.TensorProto) -> onnx.TensorProto:
    """An initializer declared as external data: name, type and dims only."""
    out = onnx.TensorProto(name=init.name, data_type=init.data_type, dims=init.dims)
    out.data_location = onnx.TensorProto.EXTERNAL
    out.external_data.add(key="location", value=STUB_LOCATION)
    return out


def is_large(init: onnx.TensorProto) -> bool:
    """Over ``STUB_BYTES`` at one byte an element (from the dims: sizing or reading the bytes would copy them)."""
    return init.data_location != onnx.TensorProto.EXTERNAL and math.prod(init.dims) > STUB_BYTES


def weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each large initializer as a stub; the weights are never copied, not even for a moment."""
    light = onnx.ModelProto()
    copy_fields(model, light, skip=("graph",))
    copy_fields(model.graph, light.graph, skip=("initializer",))
    for init in model.graph.initializer:
        if is_large(init):
            light.graph.initializer.append(stub(init))
        else:
            copy_message(init, light.graph.initializer.add())
    return light


def is_stub(init: onnx.TensorProto) -> bool:
    return any(e.value == STUB_LOCATION for e in init.external_data)


def with_weights(
    light: onnx.ModelProto, weights: onnx.ModelProto, sources: dict[str, str] | None = None
) -> onnx.ModelProto:
    """``light`` (a weightless copy, edited) with each stub filled from ``weights``' initializer of that name,
    or of the name ``sources`` maps it to (a copy the edit made of a shared weight)."""
    by_name = {i.name: i for i in weights.graph.initializer}
    for init in light.graph.initializer:
        if is_stub(init):
            name = init.name
            init.CopyFrom(by_name[(sources or {}).get(name, name)])
            init.name = name
    return light
