"""AdaRound (Nagel et al. 2020): learn, per weight, whether to round down or up, layer by layer.

For a linear layer ``y = x @ W`` the rounding is chosen to keep ``x @ W`` rather than ``W``:
``W_soft = s * clip(floor(W / s) + h(V), -qmax, qmax)`` with the rectified sigmoid ``h``,
minimising ``mean ||x @ (W - W_soft)||**2 + lambda * sum(1 - |2h - 1|**beta)`` (beta annealed
20 -> 2 after a warm-up, so every ``h`` ends at 0 or 1). The reconstruction term only needs
the Gram matrix ``G = x.T @ x / n`` of the layer's float inputs: ``mean over columns of
(W - W_soft).T G (W - W_soft)``. So memory is ``O(K**2 + K*N)`` per layer however many
calibration tokens are seen, and each of ``iterations`` Adam steps costs one ``K x K x N``
product. Inputs are the FP32 model's (the paper's choice), padding excluded.

NumPy rather than PyTorch: the full-batch Gram loss has a closed-form gradient, and
quantizing an ONNX file needs no torch install.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from tqdm import tqdm

from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.sequences import Sequences

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (paper, eq. 23)


@dataclass(frozen=True)
class AdaRoundConfig:
    """Optimisation settings; the paper's BERT runs use 10**4 iterations on 1024 sequences."""

    iterations: int = 1000
    learning_rate: float = 1e-2
    regularization: float = 0.01
    warmup: float = 0.2  # fraction of iterations before the rounding regulariser starts
    beta: tuple[float, float] = (20.0, 2.0)


def input_grams(model: onnx.ModelProto, tensors: list[str], sequences: Sequences) -> dict[str, np.ndarray]:
    """``x.T @ x / n`` (float64) of each tensor's last axis over the sequences' tokens; one unpadded sequence a run."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    outputs = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors if t not in outputs)
    session, encoder = cpu_session(exposed), Encoder.from_model(model)
    grams: dict[str, np.ndarray] = {}
    rows = dict.fromkeys(tensors, 0)
    b = sequences.texts_b or [None] * len(sequences)
    for a, bb in tqdm(list(zip(sequences.texts_a, b)), desc="AdaRound inputs", unit="seq", disable=None):
        values = session.run(tensors, encoder.feeds([a], None if bb is None else [bb]))
        for name, x in zip(tensors, values):
            x = x.reshape(-1, x.shape[-1]).astype(np.float64)
            grams[name] = grams.get(name, 0.0) + x.T @ x
            rows[name] += len(x)
    return {name: g / rows[name] for name, g in grams.items()}


def _soft(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rectified sigmoid ``h(v)`` and its derivative (0 where clipped)."""
    sig = 1.0 / (1.0 + np.exp(-v))
    h = sig * (ZETA - GAMMA) + GAMMA
    return np.clip(h, 0.0, 1.0), np.where((h > 0) & (h < 1), sig * (1 - sig) * (ZETA - GAMMA), 0.0)


def reconstruction_error(w: np.ndarray, w_hat: np.ndarray, gram: np.ndarray) -> float:
    """``mean ||x @ w - x @ w_hat||**2`` over the calibration tokens and output columns."""
    d = np.asarray(w, np.float64) - w_hat
    return float(np.einsum("kn,kn->", d, gram @ d) / d.shape[1])


def adaround(w: np.ndarray, scale: np.ndarray, qmax: int, gram: np.ndarray, config: AdaRoundConfig) -> np.ndarray:
    """Integers of ``w`` (``K x N``, ``y = x @ w``) on the full-shape ``scale``, each ``floor`` or ``floor + 1``.

    The loss is AIMET's scale: squared output error summed over columns, averaged over tokens,
    plus ``regularization`` times the rounding regulariser summed over weights.
    """
    w, s, gram = (np.asarray(a, np.float32) for a in (w, scale, gram))  # float32: the K x K x N product dominates
    base = np.floor(w / s)
    rest = np.clip(w / s - base, 1e-4, 1 - 1e-4)
    v = -np.log((ZETA - GAMMA) / (rest - GAMMA) - 1)  # h(v) = the fractional part: starts at round-to-nearest's w
    m, u = np.zeros_like(v), np.zeros_like(v)
    warm = int(config.warmup * config.iterations)
    for t in range(config.iterations):
        h, dh = _soft(v)
        q = base + h
        inside = (q >= -qmax) & (q <= qmax)
        grad = -2.0 * (gram @ (w - s * np.clip(q, -qmax, qmax))) * s * inside * dh
        if t >= warm:
            beta = config.beta[1] + (config.beta[0] - config.beta[1]) * (
                1 - (t - warm) / max(1, config.iterations - warm)
            )
            e = np.abs(2 * h - 1)
            grad += config.regularization * -beta * e ** (beta - 1) * np.sign(2 * h - 1) * 2 * dh
        m = 0.9 * m + 0.1 * grad
        u = 0.999 * u + 0.001 * grad**2
        v -= config.learning_rate * (m / (1 - 0.9 ** (t + 1))) / (np.sqrt(u / (1 - 0.999 ** (t + 1))) + 1e-8)
    return np.clip(base + (_soft(v)[0] >= 0.5), -qmax, qmax).astype(np.int64)
