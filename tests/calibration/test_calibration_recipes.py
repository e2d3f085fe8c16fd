"""Recipes (an estimator per role), memory-bounded collection and per-group ranges on the tiny BERT."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from qonnx_bert.calibration.calibrate import calibrate, estimate_ranges
from qonnx_bert.calibration.collector import Target, plan_chunks
from qonnx_bert.calibration.estimators import PerTensor, make_estimator
from qonnx_bert.calibration.grouped import GroupedRangeTable
from qonnx_bert.calibration.memory import pack, tensor_bytes
from qonnx_bert.calibration.plan import plan_calibration, shared_ranges
from qonnx_bert.calibration.recipes import load_recipe, parse_recipe
from qonnx_bert.cli import main
from qonnx_bert.core.errors import UsageError
from qonnx_bert.graph.prepare import prepare
from qonnx_bert.graph.roles import find_roles
from qonnx_bert.inputs.sequences import sample_sequences
from tests.conftest import RAGGED_TEXTS as TEXTS

SHIPPED = sorted((Path(__file__).parents[2] / "calibration").glob("*.json"))
MIXED = {  # later entries override earlier ones
    "default": "running_minmax:momentum=0.8",
    "roles": {
        "layer.*.ffn.residual_sum": "percentile:percentile=99.9",
        "layer.1.ffn.residual_sum": "mse:bits=8",
        "layer.0.attention.layernorm": "allminmax",
        "output": "mse",
    },
}


@pytest.fixture(scope="module")
def model(tiny_onnx):
    return onnx.load(str(tiny_onnx))


@pytest.fixture(scope="module")
def roles(model):
    return find_roles(prepare(model))


def sequences(n=len(TEXTS)):
    return sample_sequences(TEXTS, None, n, 0, "test")


def test_globs_resolve_last_entry_wins(roles):
    recipe = parse_recipe(MIXED, roles=roles)
    specs = recipe.specs(roles, set(roles.roles.values()) | {"no_role_tensor"})
    name = lambda role: specs[roles.tensor(role)].name  # noqa: E731
    assert name("layer.0.ffn.residual_sum") == "percentile" and name("layer.1.ffn.residual_sum") == "mse"
    assert name("output") == "mse" and name("layer.0.ffn.gelu") == "running_minmax"
    # ffn.input is the attention LayerNorm's tensor: a rule for either role covers it.
    assert name("layer.0.ffn.input") == "allminmax"
    assert specs["no_role_tensor"] == recipe.default and recipe.default.params == {"momentum": 0.8}


def test_every_problem_reported_at_once(roles):
    bad = {
        "default": "current_minmax",
        "extra": 1,
        "roles": {
            "layer.*.ffn.no_such_role": "current_minmax",
            "output": "nope",
            "layer.0.ffn.output": "percentile:percentile=120",
            "layer.1.*": "mse:bitz=8",
            "layer.0.ffn.gelu": 3,
        },
    }
    with pytest.raises(UsageError) as err:
        parse_recipe(bad, source="bad.json", roles=roles)
    message = str(err.value)
    assert "\n" not in message and message.startswith("recipe bad.json: 6 problem(s)")
    for part in (
        "unknown key 'extra'",
        "'layer.*.ffn.no_such_role' matches no role",
        "unknown estimator 'nope'",
        "percentile must be in [50, 100]",
        "no parameter 'bitz'",
        "role 'layer.0.ffn.gelu': expected",
    ):
        assert part in message, part


def test_recipe_file_errors(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_recipe(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        load_recipe(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(UsageError, match="JSON object"):
        load_recipe(tmp_path / "list.json")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_recipes_fit_the_tiny_bert(path, roles):
    recipe = load_recipe(path, roles=roles)
    assert recipe.description and not recipe.unmatched(roles)


def test_cross_entropy_recipe_narrows_the_logits_range_only(model, roles):
    recipe = next(p for p in SHIPPED if p.name == "cross-entropy-output.json")
    table = calibrate(model, sequences(), recipe=load_recipe(recipe, roles=roles), batch_size=4, progress=False)
    plain = calibrate(model, sequences(), batch_size=4, progress=False)
    out = roles.tensor("output")
    assert table.tensors[out]["estimator"] == "cross_entropy:bits=8"
    # the search shrinks the min-max range (widened to include 0, as the uint8 grid is); only the logits change
    lo, hi = min(plain.tensors[out]["min"], 0.0), max(plain.tensors[out]["max"], 0.0)
    assert lo <= table.tensors[out]["min"] <= table.tensors[out]["max"] <= hi
    others = [t for t in plain.tensors if t != out]
    assert all(table.tensors[t]["min"] == plain.tensors[t]["min"] for t in others)


def test_calibrate_records_estimator_per_tensor_and_recipe(model, roles):
    table = calibrate(model, sequences(), recipe=MIXED, batch_size=4, progress=False)
    out = roles.tensor("output")
    assert table.tensors[out]["estimator"] == "mse"
    assert table.tensors[roles.tensor("layer.0.ffn.residual_sum")]["estimator"] == "percentile:percentile=99.9"
    assert table.tensors[roles.tensor("layer.0.ffn.gelu")]["estimator"] == "running_minmax:momentum=0.8"
    assert table.calibration["recipe"]["roles"]["layer.1.ffn.residual_sum"] == "mse:bits=8"
    assert table.calibration["estimator"] == "running_minmax"
    # The recipe's output range is what the same estimator gives when it calibrates everything.
    alone = calibrate(model, sequences(), estimator="mse", batch_size=4, progress=False)
    assert (
        table.tensors[out]["min"] == alone.tensors[out]["min"]
        and table.tensors[out]["max"] == alone.tensors[out]["max"]
    )


def test_estimator_flag_replaces_recipe_default(model):
    table = calibrate(model, sequences(4), recipe=MIXED, estimator="allminmax", progress=False)
    assert table.calibration["recipe"]["default"] == "allminmax"
    assert table.calibration["recipe"]["roles"]["output"] == "mse"


def test_data_movement_copies_share_their_source_range(model, roles):
    plan = plan_calibration(prepare(model))
    assert plan.shared, "the Reshape/Transpose copies of query/key/value should share ranges"
    assert all(plan.specs[a] == plan.specs[s] for a, s in plan.shared.items())
    table = calibrate(model, sequences(), batch_size=4, progress=False)
    for alias, source in plan.shared.items():
        assert table.tensors[alias]["min"] == table.tensors[source]["min"]
    # A different estimator on the source role breaks the sharing: each is estimated on its own.
    query = roles.tensor("layer.0.attention.query")
    own = plan_calibration(prepare(model), recipe={"roles": {"layer.0.attention.query": "percentile"}})
    assert query in plan.shared.values() and query not in own.shared.values()
    assert shared_ranges(prepare(model), own.layouts, own.specs) == own.shared


def test_max_memory_cuts_into_segments_with_identical_ranges(model):
    prepared = prepare(model)
    names = [lay.name for lay in plan_calibration(prepared).layouts]
    chunks = plan_chunks(prepared, names, max_memory=0.05, batch_shape=(4, 16))
    sizes = tensor_bytes(prepared, names, 4, 16)
    assert len(chunks) > 3 and all(sum(sizes[n] for n in c) <= 0.05 * 2**20 for c in chunks)
    one = calibrate(model, sequences(), recipe=MIXED, batch_size=4, max_memory=None, progress=False)
    cut = calibrate(model, sequences(), recipe=MIXED, batch_size=4, max_memory=0.05, progress=False)
    few = calibrate(model, sequences(), recipe=MIXED, batch_size=4, max_memory=None, tensors_per_pass=5, progress=False)
    assert cut.tensors == one.tensors and few.tensors == one.tensors
    assert cut.per_channel == one.per_channel


def test_max_memory_below_one_tensor_is_a_usage_error(model):
    with pytest.raises(UsageError, match="raise `max_memory` or lower `batch_size`"):
        pack(["a", "b"], {"a": 10, "b": 3 * 2**20}, 1.0)
    with pytest.raises(UsageError, match="max_memory"):
        calibrate(model, sequences(), batch_size=4, max_memory=0.001, progress=False)


class _ColumnsOf:
    """Reference: a per-tensor estimator fed only some columns of (tokens, channels) rows."""

    def __init__(self, spec, columns):
        self.inner, self.columns = make_estimator(spec, PerTensor()), list(columns)

    def update(self, x, valid=None):
        self.inner.update(
            x[:, self.columns].reshape(-1, 1), None if valid is None else np.repeat(valid, len(self.columns))
        )

    def range(self):
        return self.inner.range()

    def reset(self):
        self.inner.reset()


def test_per_group_ranges_equal_per_tensor_ranges_of_each_group(model, roles):
    groups = {
        "layer.0.ffn.output": [[0, 5, 31], list(range(1, 5)), list(range(6, 31))],
        "layer.1.ffn.residual_sum": [list(range(16)), list(range(16, 32))],
    }
    recipe = {"default": "current_minmax", "roles": {"layer.0.ffn.output": "percentile:percentile=99"}}
    table = calibrate(model, sequences(), recipe=recipe, groups=groups, batch_size=4, progress=False)
    prepared = prepare(model)
    layouts = {lay.name: lay for lay in plan_calibration(prepared).layouts}
    for role, index_sets in groups.items():
        entry = table.per_group[role]
        assert entry["groups"] == index_sets and entry["tensor"] == roles.tensor(role)
        spec = table.tensors[entry["tensor"]]["estimator"]
        targets = [
            Target(layouts[entry["tensor"]], lambda g=g: _ColumnsOf(spec, g), True, key=str(k))
            for k, g in enumerate(index_sets)
        ]
        ref = estimate_ranges(prepared, targets, sequences(), batch_size=4, progress=False)
        for k in range(len(index_sets)):
            lo, hi = ref[str(k)].range()
            assert (entry["min"][k], entry["max"][k]) == (float(lo[0]), float(hi[0])), (role, k)


def test_per_group_bad_input(model):
    with pytest.raises(UsageError, match="no role"):
        calibrate(model, sequences(2), groups={"layer.9.ffn.output": [[0]]}, progress=False)
    with pytest.raises(UsageError, match="disjoint"):
        calibrate(model, sequences(2), groups={"layer.0.ffn.output": [[0, 1], [1]]}, progress=False)
    with pytest.raises(UsageError, match="out of range for its 32 channels"):
        calibrate(model, sequences(2), groups={"layer.0.ffn.output": [[0, 32]]}, progress=False)


def test_per_group_section_round_trips(model, tmp_path):
    table = calibrate(model, sequences(2), groups={"layer.0.ffn.output": [[0], [1, 2]]}, progress=False)
    table.save(tmp_path / "r.json")
    assert GroupedRangeTable.load(tmp_path / "r.json").per_group == table.per_group


def test_cli_recipe_and_max_memory(tiny_onnx, tmp_path, capsys):
    out = tmp_path / "r.json"
    recipe = next(p for p in SHIPPED if p.name == "mse-output.json")
    code = main(
        ["calibrate", str(tiny_onnx), "-o", str(out), "-n", "8", "--recipe", str(recipe), "--max-memory", "0.5"]
    )
    assert code == 0
    data = json.loads(out.read_text())
    assert data["calibration"]["recipe"]["source"] == str(recipe)
    assert {e["estimator"] for e in data["tensors"].values()} == {"running_minmax:momentum=0.9", "mse:bits=8"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"roles": {"layer.7.ffn.output": "nope"}}))
    capsys.readouterr()
    assert main(["calibrate", str(tiny_onnx), "-o", str(out), "-n", "2", "--recipe", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "2 problem(s)" in err and "layer.7.ffn.output" in err and "'nope'" in err
