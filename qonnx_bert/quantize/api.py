"""The quantize step: FP32 model + ranges + scheme config -> QDQ model and a report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx

from qonnx_bert.calibration.ranges import RangeTable
from qonnx_bert.core.memory import release_freed_memory
from qonnx_bert.core.modelinfo import check_encoder_inputs
from qonnx_bert.graph.cleanup import drop_unused_initializers
from qonnx_bert.graph.prepare import prepare
from qonnx_bert.graph.qdq import BITS
from qonnx_bert.graph.roles import find_roles
from qonnx_bert.passes.qdq import insert_qdq
from qonnx_bert.quantize.config import ConfigError, SchemeConfig
from qonnx_bert.quantize.lowbit import lower_weight_bits
from qonnx_bert.quantize.schemes import SchemeContext, get_scheme
from qonnx_bert.quantize.schemes.mixed import model_record


@dataclass(frozen=True)
class QuantReport:
    """What was quantized: activation quantizers by bit-width, weight tensors, scheme notes."""

    scheme: str
    activation_bits: dict[int, int]
    quantized_weights: int
    notes: list[str] = field(default_factory=list)
    selection: dict | None = None  # mixed precision: the 16-bit roles and how they were chosen (--save-selection)
    model: dict[str, str] = field(default_factory=dict)  # the FP32 model's ``model_record`` (--save-selection)

    def lines(self) -> list[str]:
        total = sum(self.activation_bits.values())
        by_bits = ", ".join(f"{n} at {b}-bit" for b, n in sorted(self.activation_bits.items())) or "none"
        weights = f"{self.quantized_weights} weight tensors quantized"
        head = f"scheme {self.scheme}: {total} activation quantizers ({by_bits}); {weights}"
        return [head, *self.notes]


def quant_report(
    model: onnx.ModelProto,
    scheme: str,
    notes: list[str] | None = None,
    selection: dict | None = None,
    fp32: dict[str, str] | None = None,
) -> QuantReport:
    """Count activation QuantizeLinear nodes per bit-width and constant-fed DequantizeLinear nodes."""
    inits = {i.name: i for i in model.graph.initializer}
    bits: Counter[int] = Counter()
    weights = 0
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            zp = inits.get(node.input[2]) if len(node.input) > 2 else None
            bits[BITS.get(zp.data_type, 8) if zp is not None else 8] += 1
        elif node.op_type == "DequantizeLinear" and node.input[0] in inits:
            weights += 1
    return QuantReport(scheme, dict(bits), weights, list(notes or []), selection, dict(fp32 or {}))


def _check(model: onnx.ModelProto, config: SchemeConfig, path: str) -> None:
    if not isinstance(config, SchemeConfig):
        raise TypeError(f"config must be a SchemeConfig (e.g. W8A8Config(), or config_for(name)), not {config!r}")
    get_scheme(config.scheme)
    check_encoder_inputs(model, path)


def _plan(handed: list, fingerprint: str, config: SchemeConfig, ranges: RangeTable | None, path: str, consume: bool):
    """The scheme's plan for ``handed``'s one model, popped: with ``consume`` only the plan then holds it."""
    model = handed.pop()
    prepared = prepare(model, in_place=consume)
    del model
    ctx = SchemeContext(config, fingerprint, prepared, find_roles(prepared), ranges, path)  # roles: fail early
    del prepared  # held by the context alone: a rewriting scheme takes it and frees it as it goes
    plan = get_scheme(config.scheme).plan(ctx)
    del ctx  # a rewriting scheme's plan holds its own copy: one model fewer while ORT quantizes
    release_freed_memory()
    return plan


def scheme_floats(model: onnx.ModelProto, config: SchemeConfig, ranges: RangeTable | None) -> onnx.ModelProto:
    """The float model ``quantize`` would insert Q/DQ into: ``model`` prepared, and rewritten by schemes that
    rewrite (PEG permutes and splits weights). QAT reads which weights it holds from it."""
    _check(model, config, "model")
    return _plan([model], model_record(model)["fingerprint"], config, ranges, "model", False).model


def quantize(
    model: onnx.ModelProto,
    config: SchemeConfig,
    ranges: RangeTable | None,
    *,
    path: str = "model",
    consume: bool = False,
) -> tuple[onnx.ModelProto, QuantReport]:
    """Apply the scheme ``config`` names to an FP32 encoder (``path`` names it in messages).

    ``model`` is left as it was, unless ``consume``: then it is prepared in place (its attention-mask
    fill changes) and, if the caller holds no other reference, freed once planned: one model-sized
    copy fewer, for callers that give the model up (the CLI).
    """
    _check(model, config, path)
    fp32 = model_record(model)
    metadata = [(p.key, p.value) for p in model.metadata_props]
    handed = [model]
    del model
    plan = _plan(handed, fp32["fingerprint"], config, ranges, path, consume)
    lowbit = config.lowbit()
    floats = plan.model if lowbit.weights or lowbit.embeddings else None  # the low-bit lowering reads its weights
    notes, plan_metadata, selection = list(plan.notes), {**plan.metadata}, plan.selection
    handed = [plan]
    del plan  # handed over: insert_qdq lets the float model go while ORT quantizes (unless kept as ``floats``)
    quantized = insert_qdq(handed.pop())
    if floats is not None:
        if lowbit.adaround and ranges is None:
            raise ConfigError(
                [("adaround", "learns on the calibration sequences: pass `ranges` (a calibration file)")], config.scheme
            )
        sequences = ranges.sequences() if lowbit.adaround else None
        quantized, lowered = lower_weight_bits(quantized, floats, lowbit, sequences)  # the plan's float weights
        notes += lowered
    drop_unused_initializers(quantized)  # the float weights QDQ insertion replaced
    del quantized.metadata_props[:]
    for key, value in [*metadata, *plan_metadata.items()]:
        quantized.metadata_props.add(key=key, value=value)
    return quantized, quant_report(quantized, config.scheme, notes, selection, fp32)
