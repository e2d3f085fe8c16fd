"""The QDQ pipeline checks what each pass guarantees: a pass that does less fails loudly."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qonnx_bert.calibration.ranges import model_fingerprint
from qonnx_bert.graph.prepare import prepare
from qonnx_bert.graph.roles import find_roles
from qonnx_bert.passes import qdq
from qonnx_bert.quantize import config_for
from qonnx_bert.quantize.schemes import SchemeContext, get_scheme


def _plan(fp32, ranges, scheme, **options):
    config = config_for(scheme, **options)
    prepared = prepare(fp32)
    return get_scheme(scheme).plan(
        SchemeContext(config, model_fingerprint(fp32), prepared, find_roles(prepared), ranges)
    )


def test_every_step_holds_on_the_schemes_that_use_it(fp32, ranges):
    cpu = _plan(fp32, ranges, "peg", groups=2, target="cpu")  # only MatMuls read rounded activations
    portable = _plan(fp32, ranges, "peg", groups=2)  # uint16 readers
    assert cpu.integer_readers and portable.uint16_readers
    for plan in (cpu, portable):
        model = qdq.insert_qdq(plan)
        assert all(step.ensures(model, plan) is None for step in qdq.QDQ_PIPELINE)


def test_a_pass_handed_the_wrong_graph_is_caught(fp32, ranges):
    """A uint16 reader the quantizer renamed away would leave ``widen_exactly`` nothing to do: caught before it runs."""
    plan = _plan(fp32, ranges, "peg", groups=2)
    plan = replace(plan, uint16_readers=[*plan.uint16_readers, "no_such_node"])
    with pytest.raises(RuntimeError, match="got a graph it cannot work on.*no_such_node"):
        qdq.insert_qdq(plan)


def test_a_pass_that_does_less_is_caught(fp32, ranges, monkeypatch):
    plan = _plan(fp32, ranges, "peg", groups=2, target="cpu")
    lazy = [replace(s, run=lambda model, plan: model) if "read float" in s.name else s for s in qdq.QDQ_PIPELINE]
    monkeypatch.setattr(qdq, "QDQ_PIPELINE", tuple(lazy))
    with pytest.raises(RuntimeError, match="integer kernel read float.*still read a rounded activation"):
        qdq.insert_qdq(plan)
