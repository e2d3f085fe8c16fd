"""A quantization plan: what ``passes.qdq`` applies. Schemes only build plans.

Planning is kept apart from graph editing: a scheme decides ranges, bit-widths
and graph rewrites; ``insert_qdq`` applies them without knowing the scheme.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import onnx

# Masked attention positions are clamped to the bottom of the softmax-input grid.
# Keeping that bottom at least this far below the top makes a masked key's
# softmax weight at most exp(-20) ~ 2e-9 of the row's largest.
SOFTMAX_MASK_MARGIN = 20.0


@dataclass
class Plan:
    """The prepared (possibly rewritten) FP32 graph and how to quantize it.

    ``ranges`` maps each activation to quantize to its (min, max); None means
    weights only. ``overrides`` are ONNX Runtime ``TensorQuantOverrides`` entries
    (16-bit types, converts, fixed scales) keyed by tensor name. ``exclude_nodes``
    are nodes ORT must leave alone because the plan places their Q/DQ itself
    (PEG's Split and Concat: ORT would force one scale on all their groups).
    ``uint16_readers`` are 16-bit nodes that read their activation on its uint8
    grid, through an exact uint16 copy (PEG's partial-product MatMuls on HTP).
    ``op_types`` are the op types ORT quantizes (None: every one it can);
    ``float_outputs`` op types whose outputs stay float; ``per_channel`` gives
    weights one int8 scale per output channel; ``integer_readers`` are the only
    op types that may read a rounded activation, every other reader reads the
    float tensor (empty: all read the rounded one); ``reduce_range`` puts the
    weights on a 7-bit grid, [-64, 64]; ``fuse_cpu`` fuses the result into the CPU
    provider's transformer kernels (``passes.cpu_fusion``) (``cpu_plan``: what
    the CPU provider's integer kernels take).
    ``metadata`` goes into the quantized model's ``metadata_props`` (e.g. the
    runtime a lowering was made for, which ``qonnx check`` reads). ``selection``
    is what a mixed-precision scheme chose for 16 bits and why (roles, sensitivity):
    the command saves it with ``--save-selection``.
    """

    model: onnx.ModelProto
    ranges: dict[str, tuple[float, float]] | None
    weights: bool = True
    overrides: dict[str, list[dict]] = field(default_factory=dict)
    exclude_nodes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    uint16_readers: list[str] = field(default_factory=list)
    selection: dict | None = None
    op_types: tuple[str, ...] | None = None
    float_outputs: tuple[str, ...] = ()
    per_channel: bool = False
    integer_readers: tuple[str, ...] = ()
    reduce_range: bool = False
    fuse_cpu: bool = False


def activation_ranges(tensors: dict[str, dict]) -> dict[str, tuple[float, float]]:
    """Calibrated ranges turned into the ranges the quantizer uses.

    Every range includes 0 (zero padding and exact zeros stay exact), and a
    softmax input keeps ``SOFTMAX_MASK_MARGIN`` below its maximum so masked
    positions stay negligible after clamping.
    """
    out = {}
    for name, entry in tensors.items():
        lo, hi = min(entry["min"], 0.0), max(entry["max"], 0.0)
        role = entry.get("role") or ""
        if role.endswith("attention.softmax_input"):
            lo = min(lo, hi - SOFTMAX_MASK_MARGIN)
        out[name] = (lo, hi)
    return out


# What the CPU provider has fast integer kernels for: MatMul/Gemm with int8 weights (MatMulIntegerToFloat
# when the output is float) and Gather on an int8 table. Its QLinear* kernels for the rest (Softmax,
# Add, Mul) are slower than their float twins, and 16-bit has no integer kernel at all.
CPU_OP_TYPES = ("MatMul", "Gemm", "Gather")


def cpu_plan(plan: Plan) -> Plan:
    """The plan for the CPU provider: only the inputs of MatMuls with a constant weight are quantized.

    Every MatMul/Gemm reads uint8 activations (the plan's own calibrated ranges) and int8
    per-channel weights and writes float, so the residual stream, LayerNorm, GELU, softmax and
    the attention products stay float; PEG's groups are then simply the MatMuls' inputs.
    Weights use 7 bits: on x86 CPUs without AVX-512 VNNI the provider's uint8 x int8 kernel
    adds pairs of products in 16 bits (VPMADDUBSW), which saturates when 255 * 127 * 2 > 32767;
    with |w| <= 64 it cannot, so every CPU computes what the graph says (ORT's ``reduce_range``).
    """
    inits = {i.name for i in plan.model.graph.initializer}
    products = [
        n.name
        for n in plan.model.graph.node
        if n.op_type == "MatMul" and not any(i in inits for i in n.input)  # Q @ K^T, P @ V: no weight
    ]
    return replace(
        plan,
        op_types=CPU_OP_TYPES,
        float_outputs=("MatMul", "Gemm"),
        integer_readers=("MatMul", "Gemm"),
        per_channel=True,
        reduce_range=True,
        fuse_cpu=True,
        exclude_nodes=list(dict.fromkeys(plan.exclude_nodes + products)),
    )
