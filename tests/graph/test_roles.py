"""Role mapping on real exports, and clear failures on graphs that do not fit."""

import onnx
import pytest
from onnx import helper

from qonnx_bert.core.errors import UsageError
from qonnx_bert.graph.roles import ATTENTION_ROLES, FFN_ROLES, expand_layer_ranges, find_roles


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def test_tiny_bert_roles_cover_every_layer(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    roles = find_roles(model)
    assert roles.num_layers == 2
    for layer in range(2):
        for r in ATTENTION_ROLES:
            assert f"layer.{layer}.attention.{r}" in roles.roles
        for r in FFN_ROLES:
            assert f"layer.{layer}.ffn.{r}" in roles.roles
    produced_by = _producers(model)
    op = lambda role: produced_by[roles.tensor(role)].op_type  # noqa: E731
    assert op("layer.0.attention.softmax_output") == "Softmax"
    assert op("layer.1.ffn.gelu") == "Gelu"
    assert op("layer.1.ffn.layernorm") == "LayerNormalization"
    assert op("layer.1.ffn.residual_sum") == "Add"
    assert op("embeddings.layernorm") == "LayerNormalization"
    # The FFN input is the attention block's LayerNorm output; the residual sum adds it back.
    assert roles.tensor("layer.0.ffn.input") == roles.tensor("layer.0.attention.layernorm")
    residual = produced_by[roles.tensor("layer.0.ffn.residual_sum")]
    assert set(residual.input) == {roles.tensor("layer.0.ffn.output"), roles.tensor("layer.0.ffn.input")}
    assert roles.tensor("output") == "logits"


@pytest.mark.slow
def test_packaged_minilm_roles(minilm_onnx):
    roles = find_roles(onnx.load(str(minilm_onnx)))
    assert roles.num_layers == 6
    assert roles.select("layer.*.ffn.residual_sum") == [f"layer.{i}.ffn.residual_sum" for i in range(6)]
    assert len(set(roles.roles.values())) == len(roles.roles) - 6  # only ffn.input aliases a tensor


def test_layer_range_patterns():
    assert expand_layer_ranges("layer.10-11.ffn.*") == ["layer.10.ffn.*", "layer.11.ffn.*"]
    assert expand_layer_ranges("output") == ["output"]


def test_unknown_role_lists_known_ones(tiny_onnx):
    roles = find_roles(onnx.load(str(tiny_onnx)))
    with pytest.raises(UsageError, match="known roles: embeddings.sum"):
        roles.tensor("layer.9.ffn.output")


def test_graph_without_attention_is_refused():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    with pytest.raises(UsageError, match="not a BERT-style encoder"):
        find_roles(helper.make_model(graph))


def test_ffn_without_gelu_names_the_layer(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    gelus = [n for n in model.graph.node if n.op_type == "Gelu"]
    gelus[1].op_type = "Tanh"  # layer 1's FFN no longer has the expected activation
    with pytest.raises(UsageError, match="layer 1: expected a Gelu"):
        find_roles(model)
