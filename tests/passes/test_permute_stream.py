"""One model-wide permutation of the residual stream, folded into the weights (PEG's
``--permutation model``): FP32-exact, no run-time Gather, refused where it cannot hold."""

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from qonnx_bert.core.errors import UsageError
from qonnx_bert.graph.prepare import prepare
from qonnx_bert.graph.roles import find_roles
from qonnx_bert.passes.permute_stream import permute_stream
from qonnx_bert.quantize import config_for, quantize
from qonnx_bert.quantize.schemes.peg_groups import model_order, segment_groups
from tests.conftest import assert_models_close
from tests.quantize.test_peg import HIDDEN, _feeds, _logits


def _permuted(model: onnx.ModelProto, perm: np.ndarray, names: list | None = None) -> onnx.ModelProto:
    """The model with ``perm`` folded; the names of the tensors it permuted are appended to ``names``."""
    roles = find_roles(model)
    graph = ir.from_proto(model)
    values = {v.name: v for n in graph.graph for v in n.outputs}
    moved = permute_stream(graph.graph, values[roles.tensor("embeddings.layernorm")], perm)
    if names is not None:
        names.extend(moved)
    return ir.to_proto(graph)


def _hidden_gathers(model: onnx.ModelProto) -> int:
    axis = lambda n: next((a.i for a in n.attribute if a.name == "axis"), 0)  # noqa: E731
    return sum(n.op_type == "Gather" and axis(n) == -1 for n in model.graph.node)


def test_fold_is_exact_and_leaves_shared_constants_alone(fp32):
    prepared = prepare(fp32)
    perm = np.random.default_rng(0).permutation(HIDDEN)
    folded = _permuted(prepared, perm)
    # Only float32 summation order changes (rows of each weight reordered): the 1e-4 bound of PEG's rewrite.
    assert_models_close(prepared, folded, _feeds(prepared), atol=1e-4)
    assert [n.op_type for n in folded.graph.node] == [n.op_type for n in prepared.graph.node]
    before = {i.name: i for i in prepared.graph.initializer}
    after = {i.name: i for i in folded.graph.initializer}
    used = {x for n in folded.graph.node for x in n.input}
    # the exporter shares one zero bias between the stream and the attention heads: the heads keep the original
    shared = [name for name in before if name in used and f"{name}.permuted_vector" in used]
    assert shared and all(after[name] == before[name] for name in shared)


def test_reported_tensors_are_exactly_the_permuted_ones(fp32):
    """What ``permute_stream`` returns (recorded in the model for ``qonnx debug``) against the graphs' own values:
    each listed tensor is the FP32 one permuted; every other role tensor kept its order."""
    from qonnx_bert.core.runtime import exposing_session
    from qonnx_bert.inputs.encode import Encoder
    from tests.quantize.test_peg import TEXTS

    prepared = prepare(fp32)
    perm = np.random.default_rng(1).permutation(HIDDEN)
    moved: list[str] = []
    folded = _permuted(prepared, perm, moved)
    roles = find_roles(prepared)
    stream = {
        roles.tensor(r)
        for r in (
            "embeddings.layernorm",
            "layer.0.attention.residual_sum",
            "layer.1.ffn.residual_sum",
            "layer.1.ffn.output",
            "layer.1.ffn.layernorm",
        )
    }
    assert stream <= set(moved)
    names = sorted(set(roles.roles.values()))
    sessions = [exposing_session(m, names) for m in (folded, prepared)]
    for text in TEXTS[:4]:
        feeds = Encoder.from_model(fp32).feeds([text])
        got, want = (s.run(names, feeds) for s in sessions)
        for name, g, w in zip(names, got, want, strict=True):
            np.testing.assert_allclose(g, w[..., perm] if name in moved else w, atol=1e-4, err_msg=name)


def test_identity_permutation_changes_no_value(fp32):
    prepared = prepare(fp32)
    assert_models_close(prepared, _permuted(prepared, np.arange(HIDDEN)), _feeds(prepared), atol=0.0)


def test_stream_as_graph_output_is_refused(fp32):
    prepared = prepare(fp32)
    roles = find_roles(prepared)
    prepared.graph.output.append(helper.make_empty_tensor_value_info(roles.tensor("layer.0.ffn.layernorm")))
    with pytest.raises(UsageError, match="graph output; use `permutation=layer`"):
        _permuted(prepared, np.arange(HIDDEN)[::-1].copy())


@pytest.mark.parametrize("grouping", ["outlier", "equal"])
def test_peg_with_model_permutation_has_no_gather_and_is_exact_in_fp32(fp32, ranges, grouping):
    peg, report = quantize(fp32, config_for("peg", groups=3, grouping=grouping, permutation="model"), ranges)
    layer_peg, _ = quantize(fp32, config_for("peg", groups=3, grouping=grouping, permutation="layer"), ranges)
    assert _hidden_gathers(peg) == 0 and _hidden_gathers(layer_peg) == 2 * 2  # 2 per layer, 2 layers
    assert any("folded into the weights" in line for line in report.lines())
    exact = _logits(fp32)
    from qonnx_bert.core.metrics import sqnr_db

    # a different grouping of the same ranges: as good as per-layer PEG within a few dB on the tiny model
    assert sqnr_db(exact, _logits(peg)) > sqnr_db(exact, _logits(layer_peg)) - 3


def test_model_order_puts_each_layers_outliers_last_and_segments_isolate_them():
    rng = np.random.default_rng(0)
    ranges = [rng.uniform(1, 2, 64) for _ in range(3)]
    ranges[0][7], ranges[2][30], ranges[2][41] = 200.0, 90.0, 40.0
    order = model_order(ranges)
    assert order[-3:].tolist() == [41, 30, 7]
    lo, hi = -ranges[2] / 2, ranges[2] / 2
    groups = segment_groups(lo, hi, 4, order)
    assert np.array_equal(np.concatenate(groups), order)  # contiguous segments of the model order
    singles = {int(g[0]) for g in groups if len(g) == 1}
    assert {30, 41} <= singles | {int(i) for g in groups if len(g) == 2 for i in g}


def test_unknown_permutation(fp32, ranges):
    with pytest.raises(UsageError, match="permutation is 'global'; choose one of: none, layer, model"):
        quantize(fp32, config_for("peg", permutation="global"), ranges)
