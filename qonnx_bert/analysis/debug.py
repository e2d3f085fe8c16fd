"""Per-role quantization error: FP32 intermediates vs a QDQ model's dequantized ones.

A QDQ model keeps each quantized activation under its FP32 name as the input of
a QuantizeLinear; the DequantizeLinear after it holds the value the rest of the
quantized graph computes with. Both models run on a few sequences, one at a
time, and for every role of the FP32 graph (``layer.3.ffn.residual_sum``)
padding positions are left out and the sums below are accumulated:

* ``sqnr_db`` = 10·log10(Σ fp32² / Σ (fp32 − dequantized)²) and ``mse``: the error
  of the quantized model at that tensor, accumulated through the graph so far;
* ``quantizer_sqnr_db``: the quantized model's own value before vs after this
  one Q/DQ, i.e. the clipping and rounding noise of this quantizer's range.

A role that a rewrite removed (PEG's split FFN) is reported as not present; a
tensor left in float (weights-only schemes, leave-one-out) is compared as is; a
tensor PEG left permuted (its residual-stream order folded into the weights, its
GELU units in groups) is compared with the FP32 value in the same order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from qonnx_bert.calibration.collector import valid_mask
from qonnx_bert.calibration.tensors import MASK_INPUT, TensorLayout, quantizable_tensors
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.modelinfo import read_permuted, static_shape
from qonnx_bert.core.runtime import exposing_session
from qonnx_bert.graph.prepare import prepare
from qonnx_bert.graph.qdq import GRAPH_OUTPUT_SUFFIX
from qonnx_bert.graph.roles import find_roles
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.sequences import Sequences, sequence_feeds

QUANTIZED, FLOAT, ABSENT = "quantized", "float", "not present"
_WIDE = {onnx.TensorProto.UINT16, onnx.TensorProto.INT16}


def valid_values(x: np.ndarray, layout: TensorLayout, mask: np.ndarray | None) -> np.ndarray:
    """The elements of ``x`` at real (non-padding) positions, flattened."""
    valid = valid_mask(layout, x.shape, mask)
    return x.reshape(-1) if valid is None else x[np.broadcast_to(valid, x.shape)]


@dataclass(frozen=True)
class Match:
    """Where a FP32 tensor's value lives in the QDQ model: before and after its Q/DQ."""

    status: str
    before: str | None = None
    after: str | None = None
    bits: int | None = None


def match_tensor(qdq: onnx.ModelProto, tensor: str) -> Match:
    """The quantized model's tensors for FP32 ``tensor``: its Q input and the DQ output after it."""
    nodes = list(qdq.graph.node)
    quant = next(
        (n for n in nodes if n.op_type == "QuantizeLinear" and n.input[0] in (tensor, tensor + GRAPH_OUTPUT_SUFFIX)),
        None,
    )
    if quant is None:
        produced = {o for n in nodes for o in n.output} | {i.name for i in qdq.graph.input}
        return Match(FLOAT, tensor, tensor) if tensor in produced else Match(ABSENT)
    deq = next((n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] == quant.output[0]), None)
    if deq is None:
        return Match(ABSENT)
    zero = {i.name: i for i in qdq.graph.initializer}.get(quant.input[2]) if len(quant.input) > 2 else None
    return Match(QUANTIZED, quant.input[0], deq.output[0], 16 if zero is not None and zero.data_type in _WIDE else 8)


@dataclass
class RoleError:
    """Accumulated error of one role over the sequences."""

    role: str
    tensor: str
    status: str
    bits: int | None = None
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("ref", "err", "pre", "qerr", "count"), 0.0))

    def add(self, ref: np.ndarray, after: np.ndarray, before: np.ndarray) -> None:
        ref, after, before = (a.astype(np.float64) for a in (ref, after, before))
        for key, value in (
            ("ref", ref**2),
            ("err", (ref - after) ** 2),
            ("pre", before**2),
            ("qerr", (before - after) ** 2),
        ):
            self.sums[key] += float(value.sum())
        self.sums["count"] += ref.size

    @staticmethod
    def _db(signal: float, noise: float) -> float:
        return math.inf if noise == 0 else 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf

    @property
    def sqnr_db(self) -> float | None:
        return None if self.status == ABSENT else self._db(self.sums["ref"], self.sums["err"])

    @property
    def mse(self) -> float | None:
        return None if self.status == ABSENT or not self.sums["count"] else self.sums["err"] / self.sums["count"]

    @property
    def quantizer_sqnr_db(self) -> float | None:
        return self._db(self.sums["pre"], self.sums["qerr"]) if self.status == QUANTIZED else None


def compare(fp32: onnx.ModelProto, qdq: onnx.ModelProto, sequences: Sequences) -> list[RoleError]:
    """Per-role error of ``qdq`` against ``fp32`` on ``sequences``, worst SQNR first, absent roles last."""
    ref_model = prepare(fp32)
    tensors = find_roles(ref_model).role_of(last=True)  # ffn.input, not attention.layernorm, for the shared one
    layouts = {t.name: t for t in quantizable_tensors(ref_model)}
    matches = {t: match_tensor(qdq, t) for t in tensors}
    errors = {t: RoleError(role, t, matches[t].status, matches[t].bits) for t, role in tensors.items()}
    present = [t for t in tensors if matches[t].status != ABSENT]
    ref_session = exposing_session(ref_model, present)
    q_names = list(dict.fromkeys(n for t in present for n in (matches[t].before, matches[t].after)))
    q_session = exposing_session(qdq, q_names)
    encoder = Encoder.from_model(fp32, static_shape=_common_shape(fp32, qdq))
    permuted = read_permuted(qdq)
    for feeds in sequence_feeds(encoder, sequences):
        ref = dict(zip(present, ref_session.run(present, _inputs(ref_session, feeds)), strict=True))
        ref.update({t: ref[t][..., permuted[t]] for t in present if t in permuted})
        got = dict(zip(q_names, q_session.run(q_names, _inputs(q_session, feeds)), strict=True))
        mask = feeds.get(MASK_INPUT)
        for t in present:
            layout = layouts.get(t, TensorLayout(t, (), False))
            m = matches[t]
            if ref[t].shape != got[m.after].shape:
                raise UsageError(
                    f"{t} is {list(ref[t].shape)} in the FP32 model but {list(got[m.after].shape)} in the "
                    "quantized one: pass the FP32 model the quantized one was made from"
                )
            errors[t].add(*(valid_values(x, layout, mask) for x in (ref[t], got[m.after], got[m.before])))
    return sorted(errors.values(), key=_worst_first)


def _common_shape(fp32: onnx.ModelProto, qdq: onnx.ModelProto) -> tuple[int, int] | None:
    """The fixed batch x length both models can take (a static model's), None if both are dynamic."""
    shapes = {"FP32": static_shape(fp32), "quantized": static_shape(qdq)}
    fixed = {s for s in shapes.values() if s}
    if len(fixed) > 1:
        given = ", ".join(f"the {k} one {s[0]}x{s[1]}" for k, s in shapes.items())
        raise UsageError(f"the two models take different fixed shapes ({given}); compare models of one shape")
    return next(iter(fixed), None)


def _inputs(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = {i.name for i in session.get_inputs()}
    return {k: v for k, v in feeds.items() if k in names}


def _worst_first(e: RoleError) -> tuple[int, float]:
    return (1, 0.0) if e.sqnr_db is None else (0, e.sqnr_db)


def _fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "—"
    return "∞" if math.isinf(value) and value > 0 else format(value, spec)


def render_errors(errors: list[RoleError]) -> str:
    """A Markdown table, one row per role, in the given (worst-first) order."""
    lines = [
        "| role | tensor | quantized | SQNR dB (vs FP32) | MSE | quantizer SQNR dB |",
        "|---|---|---|---:|---:|---:|",
    ]
    for e in errors:
        state = f"{e.bits}-bit" if e.status == QUANTIZED else e.status
        lines.append(
            f"| {e.role} | {e.tensor} | {state} | {_fmt(e.sqnr_db, '.1f')} | {_fmt(e.mse, '.3g')} | "
            f"{_fmt(e.quantizer_sqnr_db, '.1f')} |"
        )
    return "\n".join(lines)


def plot_errors(errors: list[RoleError], path: str, title: str = "") -> None:
    """Horizontal bars of SQNR vs FP32 per role (worst at the top), the quantizer's own SQNR as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    shown = [e for e in errors if e.sqnr_db is not None and math.isfinite(e.sqnr_db)]
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.2 * max(len(shown), 1)))
    y = np.arange(len(shown))[::-1]
    colors = ["tab:red" if ".ffn." in e.role else "tab:blue" for e in shown]
    ax.barh(y, [e.sqnr_db for e in shown], color=colors)
    q = [
        (yy, e.quantizer_sqnr_db)
        for yy, e in zip(y, shown, strict=True)
        if e.quantizer_sqnr_db is not None and math.isfinite(e.quantizer_sqnr_db)
    ]
    ax.plot([v for _, v in q], [yy for yy, _ in q], "k.")
    ax.set_yticks(y, [e.role for e in shown], fontsize=7)
    ax.set_xlabel("SQNR (dB), higher is better")
    ax.set_title(title or "Quantization error per role, worst first")
    handles = [
        Patch(color="tab:red", label="FFN roles: vs FP32"),
        Patch(color="tab:blue", label="other roles: vs FP32"),
        Line2D([], [], color="k", marker=".", ls="", label="this quantizer alone"),
    ]
    ax.legend(handles=handles, loc="best", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
