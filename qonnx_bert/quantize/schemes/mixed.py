"""int8/int16 mixed precision by role: ``--int16`` on any scheme, the paper's ``mp``, and ``auto-mp``.

* ``--int16 PATTERN`` (globs and layer ranges over roles, ``layer.4-5.ffn.*``) and
  ``--int16-from FILE`` keep the chosen activations in uint16 on top of any
  scheme; ``passes.mixed_precision`` makes the 8/16 boundaries legal.
* ``mp``: the paper's best MP-PTQ (Table 4): W8A8 with the FFN input, output and
  residual sum of every layer and the final output in uint16. The final
  output's range is re-estimated with ``mse:bits=16`` on the calibration
  sequences (the paper's MSE estimator, at the width the output is stored in);
  the other 16-bit tensors keep their calibrated ranges, as in the paper.
* ``auto-mp``: spends a ``budget`` of 16-bit activations where the calibration
  data says it matters: with every role in 16 bits, each role in turn is
  rounded to 8 bits alone and scored by the logit SQNR that leaves (vs the
  all-16-bit logits); the lowest-scoring roles are kept in 16 bits. The paper's
  hand-picked set is one fixed answer; on MiniLM the costly layers are the first
  ones, not BERT-base's last, so the choice is measured.

A budget and the "N of M" in the report count activations by role (the FFN
input and the attention LayerNorm are one tensor); each role brings its
pre-bias and reshaped copies (``passes.mixed_precision.value_group``).
A selection is saved as JSON (roles plus the model's fingerprint) and replayed
with ``--int16-from``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import onnx
from tqdm import tqdm

from qonnx_bert.calibration.calibrate import estimate_ranges
from qonnx_bert.calibration.collector import Target
from qonnx_bert.calibration.estimators import PerTensor, make_estimator
from qonnx_bert.calibration.ranges import model_fingerprint
from qonnx_bert.calibration.tensors import quantizable_tensors
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.files import atomic_output, read_json_object, require
from qonnx_bert.core.metrics import sqnr_db
from qonnx_bert.core.modelinfo import read_info
from qonnx_bert.graph.roles import RoleMap
from qonnx_bert.passes.mixed_precision import int16_overrides, value_group, wide_tensors, with_quantizer_bits
from qonnx_bert.passes.plan import Plan
from qonnx_bert.passes.qdq import insert_qdq
from qonnx_bert.quantize.config import AutoMpConfig, ConfigError, MixedPrecisionConfig, SchemeConfig
from qonnx_bert.quantize.schemes.baseline import W8A8
from qonnx_bert.quantize.schemes.context import SchemeContext
from qonnx_bert.quantize.schemes.replay import calibration_feeds, calibration_sequences, logits_on

logger = logging.getLogger(__name__)

MP_PATTERNS = ("layer.*.ffn.input", "layer.*.ffn.output", "layer.*.ffn.residual_sum", "output")
CPU_NOTE = "16-bit QDQ is simulated on the ONNX Runtime CPU provider (no int16 kernels)"
SELECTION_FORMAT = "qonnx.int16-selection"
SELECTION_VERSION = 1


def _span(layers: list[int]) -> str:
    lo, hi = min(layers), max(layers)
    if sorted(layers) != list(range(lo, hi + 1)):
        return "{" + ",".join(map(str, layers)) + "}"
    return f"{lo}-{hi}" if hi > lo else str(lo)


def compact(roles: Iterable[str]) -> str:
    """``layer.0.ffn.input, layer.1.ffn.input, output`` -> ``layer.0-1.ffn.input, output`` (for messages)."""
    layers: dict[str, list[int]] = {}
    for role in roles:
        m = re.fullmatch(r"layer\.(\d+)\.(.+)", role)
        layers.setdefault(f"layer.#.{m[2]}" if m else role, []).append(int(m[1]) if m else -1)
    return ", ".join(k.replace("#", _span(v)) if k.startswith("layer.#.") else k for k, v in layers.items())


def select_roles(roles: RoleMap, patterns: Iterable[str]) -> list[str]:
    """Roles matching any pattern, in graph order; a pattern that matches nothing is an error."""
    patterns = list(patterns)
    for pattern in patterns:
        if not roles.select(pattern):
            raise ConfigError([("int16", f"pattern {pattern!r} matches no role; known roles: {compact(roles.roles)}")])
    matched = {r for p in patterns for r in roles.select(p)}
    return [r for r in roles.roles if r in matched]


def model_record(model: onnx.ModelProto) -> dict[str, str]:
    """What a selection file says of the FP32 model it was chosen on (``QuantReport.model``)."""
    return {"fingerprint": model_fingerprint(model), "source": read_info(model).source}


def save_selection(
    path: str | Path, model: dict[str, str], scheme: str, selection: dict, *, inputs: tuple = ()
) -> None:
    """Write a selection that ``--int16-from`` replays, bound by fingerprint to the ``model_record`` ``model``."""
    doc = {
        "format": SELECTION_FORMAT,
        "version": SELECTION_VERSION,
        "scheme": scheme,
        "model": model,
        "roles": selection["roles"],
        "sensitivity": selection["sensitivity"],
    }
    with atomic_output(path, inputs=inputs) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))


def load_selection(path: str | Path, fingerprint: str) -> list[str]:
    """The roles of a saved selection; refuses a file made for another model (``model_fingerprint``)."""
    doc = read_json_object(path, "selection file", f"write one with `qonnx quantize --save-selection {path}`")
    if doc.get("format") != SELECTION_FORMAT or doc.get("version") != SELECTION_VERSION:
        raise UsageError(
            f"{path} is not a qonnx int16 selection (version {SELECTION_VERSION}); "
            "write one with `qonnx quantize --save-selection`"
        )
    made_for = require(doc, "model", dict, str(path))
    if made_for.get("fingerprint") != fingerprint:
        raise UsageError(
            f"{path} was selected on another model ({made_for.get('source')}); "
            "re-run `qonnx quantize --scheme auto-mp` on this one"
        )
    roles = require(doc, "roles", list, str(path))
    if not all(isinstance(r, str) for r in roles):
        raise UsageError(f"{path}: key 'roles' must be a list of role names (strings)")
    return roles


def requested_roles(ctx: SchemeContext) -> list[str]:
    """Roles named by ``--int16`` patterns and ``--int16-from`` files."""
    patterns = list(ctx.config.int16)
    if ctx.config.int16_from:
        patterns += load_selection(ctx.config.int16_from, ctx.fingerprint)
    return select_roles(ctx.roles, patterns)


def in_graph_order(ctx: SchemeContext, roles: Iterable[str]) -> list[str]:
    """``roles`` deduplicated in graph order: selections and plans do not depend on how they were listed."""
    wanted = set(roles)
    return [r for r in ctx.roles.roles if r in wanted]


def role_tensors(plan: Plan, ctx: SchemeContext, roles: Iterable[str]) -> list[str]:
    """The quantized tensors carrying the values of ``roles``: each role's tensor and its ``value_group``."""
    lost = [r for r in roles if ctx.roles.tensor(r) not in plan.ranges]
    if lost:
        raise UsageError(f"scheme {ctx.scheme} rewrites {compact(lost)}: no single tensor left to keep in 16 bits")
    groups = [value_group(plan.model, ctx.roles.tensor(r)) for r in roles]
    return list(dict.fromkeys(t for group in groups for t in group if t in plan.ranges))


def apply_int16(
    plan: Plan, ctx: SchemeContext, roles: list[str], *, ranges: dict | None = None, notes: Iterable[str] = ()
) -> Plan:
    """``plan`` with the tensors of ``roles`` in uint16 (``ranges``: their own, else the calibrated ones)."""
    if plan.ranges is None:
        raise ConfigError([("int16", f"needs a scheme that quantizes activations; {ctx.scheme} keeps them in float")])
    ordered = in_graph_order(ctx, roles)
    if not ordered:
        return replace(plan, notes=[*plan.notes, *notes])
    tensors = role_tensors(plan, ctx, ordered)
    overrides = int16_overrides(plan.model, tensors, plan.overrides, ranges)
    activations = ctx.roles.role_of()
    wide = wide_tensors(plan.model, overrides) & set(activations)
    summary = (
        f"16-bit: {len(wide)} of {len(activations)} activations (asked: {compact(ordered)}; their pre-bias and "
        "reshaped copies and the tensors between two 16-bit ops follow), requantized at 8/16 boundaries"
    )
    return replace(plan, overrides=overrides, notes=[*plan.notes, *notes, summary, CPU_NOTE])


def with_selection(plan: Plan, ctx: SchemeContext, roles: list[str], sensitivity: dict | None = None) -> Plan:
    """``plan`` carrying the 16-bit roles (graph order) and how they were chosen, for ``--save-selection``."""
    return replace(plan, selection={"roles": in_graph_order(ctx, roles), "sensitivity": sensitivity})


def reestimate(ctx: SchemeContext, specs: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Ranges of some tensors re-estimated with their own estimator spec on the calibration sequences."""
    layouts = {t.name: t for t in quantizable_tensors(ctx.prepared)}
    targets = [Target(layouts[t], partial(make_estimator, spec, PerTensor()), label=t) for t, spec in specs.items()]
    est = estimate_ranges(ctx.prepared, targets, calibration_sequences(ctx.ranges), progress=False)
    return {t: (float(e.range()[0][0]), float(e.range()[1][0])) for t, e in est.items()}


@dataclass(frozen=True)
class Int16Scheme:
    """A base scheme plus 16-bit roles: its own ``patterns`` and the user's ``--int16``/``--int16-from``.

    ``estimators`` re-estimate some roles' ranges for their 16-bit grid (role, spec).
    """

    base: Any
    config: type[SchemeConfig]
    patterns: tuple[str, ...] = ()
    estimators: tuple[tuple[str, str], ...] = ()

    def plan(self, ctx: SchemeContext) -> Plan:
        roles = select_roles(ctx.roles, [*self.patterns, *requested_roles(ctx)])
        specs = {ctx.roles.tensor(r): spec for r, spec in self.estimators if r in roles}
        ranges = reestimate(ctx, specs) if specs else None  # before the base plan, which may take the prepared model
        plan = with_selection(self.base.plan(ctx), ctx, roles)
        return apply_int16(plan, ctx, roles, ranges=ranges) if roles else plan


def with_int16(scheme: Any) -> Int16Scheme:
    """``scheme`` taking its config's ``int16``/``int16_from`` roles on top."""
    return Int16Scheme(scheme, scheme.config)


def budget_count(budget: int | float, total: int) -> int:
    """The budget as a number of roles: a count in [0, total] or a fraction in [0, 1] of ``total``."""
    if isinstance(budget, float):
        return round(budget * total)
    if budget > total:
        raise ConfigError([("budget", f"is {budget}: more than the {total} activations of this model")])
    return budget


def scan_sensitivity(ctx: SchemeContext, plan: Plan, forced: list[str], candidates: list[str]) -> dict:
    """Logit SQNR (dB) of each candidate role rounded to 8 bits alone, all other candidates in 16 bits.

    Measured from the 16-bit side: near FP32, the noise each 8-bit activation adds
    is small and the powers add up, so one-at-a-time scores rank. From the 8-bit
    side one role's fix is buried under all the others' errors (on MiniLM the
    single-role gains from W8A8 were within noise, blind to the outliers). The
    reference is the all-16-bit model, so weight rounding cancels.
    """
    feeds = calibration_feeds(ctx.prepared, ctx.ranges)
    wide = insert_qdq(apply_int16(plan, ctx, forced + candidates))
    wide_logits = logits_on(wide, feeds)
    scores = {}
    for role in tqdm(candidates, desc="int16 sensitivity", unit="role", disable=None):
        narrow = {t: plan.ranges[t] for t in role_tensors(plan, ctx, [role])}
        scores[role] = sqnr_db(wide_logits, logits_on(with_quantizer_bits(wide, narrow, 8), feeds))
    return {
        "metric": "logit SQNR (dB) vs all-16-bit with only this role in 8 bits",
        "sequences": len(wide_logits),
        "all16_vs_fp32_db": sqnr_db(logits_on(ctx.prepared, feeds), wide_logits),
        "sqnr_db": scores,
    }


@dataclass(frozen=True)
class AutoMixedPrecision:
    """W8A8 plus the ``budget`` roles that hurt the logits most when rounded to 8 bits.

    Roles forced with ``--int16``/``--int16-from`` are 16-bit from the start and
    do not count against the budget.
    """

    base: Any
    config: type[SchemeConfig] = AutoMpConfig

    def plan(self, ctx: SchemeContext) -> Plan:
        forced = requested_roles(ctx)
        plan = self.base.plan(ctx)
        activations = ctx.roles.role_of()  # one role per tensor: FFN input and attention LayerNorm share one
        count = budget_count(ctx.config.budget, len(activations))
        taken = {ctx.roles.tensor(r) for r in forced}
        candidates = [r for t, r in activations.items() if t not in taken]
        scan = scan_sensitivity(ctx, plan, forced, candidates) if 0 < count < len(candidates) else None
        picked = sorted(candidates, key=scan["sqnr_db"].get)[:count] if scan else candidates[:count]
        plan = with_selection(plan, ctx, forced + picked, scan)
        return apply_int16(plan, ctx, forced + picked, notes=_scan_notes(scan, picked))


def _scan_notes(scan: dict | None, picked: list[str]) -> list[str]:
    if scan is None:
        return []
    worst = ", ".join(f"{r} {scan['sqnr_db'][r]:.1f} dB" for r in picked)
    return [
        f"auto-mp: all-16-bit logit SQNR {scan['all16_vs_fp32_db']:.1f} dB vs FP32 on {scan['sequences']} "
        f"calibration sequences; picked (logit SQNR with only that role in 8 bits): {worst}"
    ]


MIXED_SCHEMES = (
    Int16Scheme(W8A8, MixedPrecisionConfig, MP_PATTERNS, (("output", "mse:bits=16"),)),
    AutoMixedPrecision(W8A8),
)
