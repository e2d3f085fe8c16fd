"""SmoothQuant's outlier migration (Xiao et al. 2023) as an exact FP32 rewrite of MatMul inputs.

An activation X read by MatMuls with constant weights W gets a factor per input channel,
s_j = max|X_j|^alpha / max_k |W_jk|^(1 - alpha) (SmoothQuant's formula, all the site's weights'
rows together), and X W becomes (X / s)(diag(s) W): a channel with outliers is divided down,
the weight rows it meets are scaled up, and one per-tensor 8-bit grid fits X / s far better.

SmoothQuant folds 1/s into the LayerNorm before the MatMuls; that is exact only where the
LayerNorm's output feeds nothing else, as in pre-LayerNorm LLMs. In BERT's post-LayerNorm
blocks that output is also the residual input, so here 1/s is an explicit ``Mul`` on the
MatMuls' side only: the residual stream (where BERT's largest outliers live) is untouched,
which is also why smoothing cannot help a graph that quantizes the residual sum itself.
A weight shared by several MatMuls (ALBERT's layers) is left alone: scaling it for one
reader would change the others.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

MIN_SCALE = 1e-5  # SmoothQuant's clamp: a channel that is always zero keeps a finite factor


@dataclass(frozen=True)
class SmoothSite:
    """An activation, and the MatMuls (by output name) reading it with their constant 2-D weights (by name)."""

    tensor: str
    matmuls: tuple[str, ...]
    weights: tuple[str, ...]


def smoothing_sites(model: onnx.ModelProto) -> tuple[list[SmoothSite], list[str]]:
    """The activations that can be smoothed, and those skipped because a weight they meet is shared."""
    inits = {i.name: i for i in model.graph.initializer}
    readers = Counter(name for node in model.graph.node for name in node.input)
    by_input: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is not None and len(weight.dims) == 2 and weight.data_type == onnx.TensorProto.FLOAT:
            if node.input[0] not in inits:
                by_input.setdefault(node.input[0], []).append(node)
    sites, shared = [], []
    for tensor, nodes in by_input.items():
        if any(readers[n.input[1]] > 1 for n in nodes):
            shared.append(tensor)
        else:
            sites.append(SmoothSite(tensor, tuple(n.output[0] for n in nodes), tuple(n.input[1] for n in nodes)))
    return sites, shared


def weight_row_absmax(model: onnx.ModelProto, sites: list[SmoothSite]) -> dict[SmoothSite, np.ndarray]:
    """max |W_jk| over k of every input channel j, over all of each site's weights."""
    inits = {i.name: i for i in model.graph.initializer}
    return {s: np.max([np.abs(numpy_helper.to_array(inits[w])).max(axis=1) for w in s.weights], axis=0) for s in sites}


def smoothing_scales(activation_absmax: np.ndarray, weight_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-channel factor s = a^alpha / w^(1 - alpha), clamped below at ``MIN_SCALE``."""
    a = np.asarray(activation_absmax, np.float64)
    w = np.maximum(np.asarray(weight_absmax, np.float64), MIN_SCALE)
    return np.maximum(a**alpha / w ** (1.0 - alpha), MIN_SCALE).astype(np.float32)


def smoothed_name(tensor: str) -> str:
    return f"{tensor}.smoothed"


def smooth(model: onnx.ModelProto, scales: dict[SmoothSite, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose sites' MatMuls read ``X * (1/s)`` and whose weight rows are multiplied by ``s``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    matmuls = {n.output[0]: n for n in graph.node if n.op_type == "MatMul"}
    before: dict[str, onnx.NodeProto] = {}  # by MatMul output: a site's Mul goes right before its first MatMul
    for site, s in scales.items():
        for name in site.weights:
            weight = inits[name]
            weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * s[:, None], name))
        for output in site.matmuls:
            matmuls[output].input[0] = smoothed_name(site.tensor)
        inverse = f"{site.tensor}.smooth_inverse"
        graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inverse))
        mul = helper.make_node(
            "Mul", [site.tensor, inverse], [smoothed_name(site.tensor)], name=f"{site.tensor}.smooth"
        )
        before[site.matmuls[0]] = mul
    ordered = []
    for node in graph.node:
        if node.output and node.output[0] in before:
            ordered.append(before[node.output[0]])
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    return out
