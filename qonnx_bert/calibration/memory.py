"""How many bytes a batch's exposed activations take, and chunks of tensors that fit a budget.

Sizes come from ONNX shape inference with the batch axis set to the batch size and
every other symbolic axis to the longest calibration sequence (in BERT exports the
only symbolic axes are batch and sequence; ``Min(512, sequence)``-style expressions
are bounded by the sequence length too). A tensor whose shape is unknown is counted
as the largest known one, so the estimate errs on the safe side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from qonnx_bert.core.errors import UsageError
from qonnx_bert.graph.shapes import value_infos

MB = 2**20
DEFAULT_MAX_MEMORY_MB = 512.0  # BERT-base, 8 x 128 tokens: three segments (peak RSS: bench/results/large-geometry.md)


def tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, list]]:
    """tensor -> (bytes per element, dims as ints or symbol names)."""
    out = {}
    for v in value_infos(model):
        t = v.type.tensor_type
        if t.elem_type and t.HasField("shape"):
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
            out[v.name] = (
                itemsize,
                [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim],
            )
    return out


def _batch_symbol(model: onnx.ModelProto) -> str | int | None:
    for i in model.graph.input:
        dims = i.type.tensor_type.shape.dim
        if i.name == "input_ids" and dims:
            return dims[0].dim_param or dims[0].dim_value
    return None


def tensor_bytes(model: onnx.ModelProto, names: Sequence[str], batch: int, length: int) -> dict[str, int]:
    """Bytes each of ``names`` takes for one batch of ``batch`` sequences of ``length`` tokens."""
    dims, batch_symbol = tensor_shapes(model), _batch_symbol(model)
    sizes = {}
    for name in names:
        if name in dims:
            itemsize, shape = dims[name]
            sym = [batch if d == batch_symbol else length for d in shape if isinstance(d, str)]
            sizes[name] = itemsize * int(np.prod([d for d in shape if isinstance(d, int)] + sym, dtype=np.int64))
    largest = max(sizes.values(), default=4 * batch * length)
    return {n: sizes.get(n, largest) for n in names}


def pack(
    names: Sequence[str], sizes: dict[str, int], budget_mb: float, *, max_count: int | None = None
) -> list[list[str]]:
    """Consecutive chunks of ``names`` whose summed sizes stay within ``budget_mb`` (and count within ``max_count``)."""
    budget = budget_mb * MB
    too_big = [n for n in names if sizes[n] > budget]
    if too_big:
        worst = max(too_big, key=sizes.get)
        raise UsageError(
            f"`max_memory={budget_mb:g}` MB is below one batch of tensor {worst} ({sizes[worst] / MB:.0f} MB); "
            "raise `max_memory` or lower `batch_size`"
        )
    chunks: list[list[str]] = []
    used = 0.0
    for name in names:
        if not chunks or used + sizes[name] > budget or len(chunks[-1]) == max_count:
            chunks.append([])
            used = 0
        chunks[-1].append(name)
        used += sizes[name]
    return chunks
