"""Typed scheme configs: JSON round trip, every problem at once, flags in CLI errors, replay, plugins."""

from __future__ import annotations

import json

import pytest

from qonnx_bert.cli import main
from qonnx_bert.quantize import (
    AutoMpConfig,
    ConfigError,
    Grouping,
    PegConfig,
    PegEqualConfig,
    Permutation,
    Target,
    config_for,
    config_from_dict,
    scheme_names,
)
from qonnx_bert.quantize.schemes import get_scheme

EXAMPLES = [
    config_for("w8a8", int16=["layer.*.ffn.residual_sum"], int16_from="sel.json"),
    config_for("w8a32"),
    config_for("w32a8"),
    config_for("mp", int16=["output"]),
    AutoMpConfig(budget=0.25),
    AutoMpConfig(budget=3),
    PegConfig(groups=3, grouping="equal", permutation="none", layers=[0, 2], intermediate_groups=1, target="cpu"),
    PegEqualConfig(groups=4),
    config_for("w8a32", weight_bits=4, weight_granularity="block", block_size=16, embedding_bits=2, adaround=10),
]


@pytest.mark.parametrize("config", EXAMPLES, ids=lambda c: c.scheme)
def test_json_round_trip(config):
    text = json.dumps(config.to_dict())
    again = config_from_dict(json.loads(text))
    assert again == config and type(again) is type(config)


def test_every_builtin_scheme_has_a_config():
    builtin = ["w8a8", "w8a32", "w32a8", "peg", "peg-equal", "mp", "auto-mp", "smoothquant"]
    assert scheme_names()[: len(builtin)] == builtin
    for name in scheme_names():
        assert get_scheme(name).config.scheme == name


def test_strings_become_enums_and_lists_tuples():
    c = PegConfig(grouping="equal", permutation="layer", target="cpu", layers=[1, 3])
    assert (c.grouping, c.permutation, c.target, c.layers) == (Grouping.EQUAL, Permutation.LAYER, Target.CPU, (1, 3))
    assert f"{c.grouping}" == "equal" and str(c.target) == "cpu"


def test_defaults_of_the_two_peg_schemes():
    peg, equal = PegConfig(), PegEqualConfig()
    assert (peg.groups, peg.grouping, peg.permutation, peg.intermediate_groups) == (6, "outlier", "model", 2)
    assert (equal.groups, equal.grouping, equal.permutation, equal.intermediate_groups) == (6, "equal", "layer", 1)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        config_for("peg", groups=0, grouping="wide", layers=[-1], intermediate_groups=1.5, target="gpu", colour=1)
    fields = [name for name, _ in info.value.problems]
    assert sorted(fields) == ["colour", "grouping", "groups", "intermediate_groups", "layers", "target"]
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "values",
    [
        {"groups": 0},
        {"groups": -2},
        {"groups": 2.5},
        {"groups": True},
        {"layers": []},
        {"intermediate_groups": 0},
        {"permutation": "global"},
        {"grouping": "outlier", "permutation": "none"},
    ],
)
def test_bad_peg_values_are_refused(values):
    with pytest.raises(ConfigError):
        PegConfig(**values)


@pytest.mark.parametrize("budget", [None, -1, 1.5, -0.1, "3", True])
def test_bad_budgets_are_refused(budget):
    with pytest.raises(ConfigError, match="budget"):
        AutoMpConfig(budget=budget)


def test_unknown_keys_and_schemes():
    with pytest.raises(ConfigError, match="groups is not a setting of w8a8"):
        config_for("w8a8", groups=3)
    with pytest.raises(ConfigError, match="scheme is missing"):
        config_from_dict({"groups": 3})
    with pytest.raises(ValueError, match="unknown scheme 'w4a4'"):
        config_from_dict({"scheme": "w4a4"})


def test_configs_are_frozen():
    with pytest.raises(AttributeError):
        PegConfig().groups = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--scheme", "peg", "--groups", "0"], "--groups is 0"),
        (["--scheme", "peg", "--intermediate-groups", "-1"], "--intermediate-groups is -1"),
        (["--groups", "3"], "--groups is not a setting of w8a8"),
        (["--scheme", "auto-mp"], "--budget is required"),
        (["--scheme", "peg", "--layers", "5-2"], "--layers: '5-2' is not a layer list"),
        (["--scheme", "peg", "--permutation", "none"], "--grouping outlier forms groups"),
    ],
)
def test_cli_words_config_problems_as_flags(tiny_onnx, tmp_path, capfd, flags, words):
    code = main(["quantize", str(tiny_onnx), "-o", str(tmp_path / "q.onnx"), *flags])
    err = capfd.readouterr().err.strip()
    assert code == 2 and words in err and "\n" not in err
    assert not (tmp_path / "q.onnx").exists()


def test_cli_save_config_replays_the_same_model(tiny_onnx, ranges, tmp_path):
    ranges.save(tmp_path / "r.json")
    base = ["quantize", str(tiny_onnx), "--ranges", str(tmp_path / "r.json")]
    flags = ["--scheme", "peg", "--groups", "3", "--target", "cpu", "--layers", "1"]
    assert main([*base, *flags, "-o", str(tmp_path / "a.onnx"), "--save-config", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["layers"] == [1]
    assert main([*base, "--config", str(tmp_path / "c.json"), "-o", str(tmp_path / "b.onnx")]) == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert main([*base, "--config", str(tmp_path / "c.json"), "--groups", "2", "-o", str(tmp_path / "x.onnx")]) == 2


def test_cli_config_file_problems_name_the_file(tiny_onnx, tmp_path, capfd):
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"scheme": "peg", "groups": 0, "colour": "red"}))
    assert main(["quantize", str(tiny_onnx), "--config", str(bad), "-o", str(tmp_path / "q.onnx")]) == 2
    err = capfd.readouterr().err
    assert f"{bad}: peg: " in err and "--groups is 0" in err and "--colour is not a setting" in err


def test_a_scheme_plugin_registers_through_its_entry_point(tmp_path, monkeypatch, fp32, ranges):
    """A third-party scheme: its own config class and planner, found by entry point, quantized by ``quantize``."""
    from qonnx_bert.quantize import quantize

    (tmp_path / "qonnx_fake_scheme.py").write_text(
        "from dataclasses import dataclass\n"
        "from typing import ClassVar\n"
        "from qonnx_bert.quantize.config import SchemeConfig\n"
        "from qonnx_bert.quantize.schemes.baseline import W8A8\n"
        "@dataclass(frozen=True, kw_only=True)\n"
        "class HalfConfig(SchemeConfig):\n"
        "    scheme: ClassVar[str] = 'half'\n"
        "class Half:\n"
        "    config = HalfConfig\n"
        "    def plan(self, ctx):\n"
        "        return W8A8.plan(ctx)\n"
        "SCHEME = Half()\n"
    )
    info = tmp_path / "qonnx_fake_scheme-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: qonnx-fake-scheme\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[qonnx.schemes]\nhalf = qonnx_fake_scheme:SCHEME\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "half" in scheme_names()
    model, report = quantize(fp32, config_for("half"), ranges)
    assert report.scheme == "half" and report.activation_bits


def test_values_that_do_not_fit_the_model_come_back_as_flags(tiny_onnx, ranges, tmp_path, capfd):
    """Checked at plan time (the model's size decides), worded like the config's own problems."""
    ranges.save(tmp_path / "r.json")
    base = ["quantize", str(tiny_onnx), "--ranges", str(tmp_path / "r.json"), "-o", str(tmp_path / "q.onnx")]
    for flags, words in (
        (["--scheme", "peg", "--groups", "33"], "--groups is 33: out of range for this model"),
        (["--scheme", "peg", "--layers", "7"], "--layers has 7: out of range"),
        (["--int16", "layer.9.*"], "--int16 pattern 'layer.9.*' matches no role"),
    ):
        assert main([*base, *flags]) == 2
        err = capfd.readouterr().err.strip()
        assert words in err and "\n" not in err
    assert not (tmp_path / "q.onnx").exists()


def test_low_bit_weights_through_the_config_and_the_cli(tiny_onnx, ranges, tmp_path):
    """``--weight-bits 4 --embedding-bits 2`` on a scheme: packed INT4/INT2 initializers in the file it writes."""
    import onnx

    ranges.save(tmp_path / "r.json")
    out = tmp_path / "q.onnx"
    flags = [
        "--scheme",
        "w8a8",
        "--weight-bits",
        "4",
        "--embedding-bits",
        "2",
        "--save-config",
        str(tmp_path / "c.json"),
    ]
    assert main(["quantize", str(tiny_onnx), "--ranges", str(tmp_path / "r.json"), "-o", str(out), *flags]) == 0
    types = {i.data_type for i in onnx.load(str(out)).graph.initializer}
    assert {onnx.TensorProto.INT4, onnx.TensorProto.INT2} <= types
    saved = json.loads((tmp_path / "c.json").read_text())
    assert (saved["weight_bits"], saved["embedding_bits"], saved["weight_granularity"]) == (4, 2, "per-channel")
