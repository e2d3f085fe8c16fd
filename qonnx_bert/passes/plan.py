"""A quantization plan: what ``passes.qdq`` applies. Schemes only build plans.

Planning is kept apart from graph editing: a scheme decides ranges, bit-widths
and graph rewrites; ``insert_qdq`` applies them without knowing the scheme.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    ``float_tensors`` lose the Q/DQ ORT gives them (ORT quantizes every MatMul
    output; PEG's partial products are summed in float on the CPU provider).
    ``uint16_readers`` are 16-bit nodes that read their activation on its uint8
    grid, through an exact uint16 copy (PEG's partial-product MatMuls on HTP).
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
    float_tensors: list[str] = field(default_factory=list)
    uint16_readers: list[str] = field(default_factory=list)
    selection: dict | None = None


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
