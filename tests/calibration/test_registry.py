"""Estimator registry: spec parsing, errors users see, registration and entry-point plugins."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from qonnx_bert.calibration.estimators import (
    EstimatorSpec,
    PerChannel,
    PerTensor,
    RangeEstimator,
    RunningMinMax,
    estimator_names,
    get_estimator,
    make_estimator,
    parse_estimator_spec,
    register_estimator,
    registry,
)
from qonnx_bert.core.errors import UsageError

BUILTINS = {"current_minmax", "allminmax", "running_minmax", "percentile", "mse"}


@pytest.fixture
def isolated_registry(monkeypatch):
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_builtins_registered():
    assert BUILTINS <= set(estimator_names())
    assert get_estimator("running_minmax") is RunningMinMax
    assert get_estimator("allminmax").name == "allminmax"
    assert issubclass(get_estimator("allminmax"), get_estimator("current_minmax"))


def test_parse_spec_values():
    assert parse_estimator_spec("mse:bits=8,symmetric=false") == EstimatorSpec("mse", {"bits": 8, "symmetric": False})
    assert parse_estimator_spec(" percentile : percentile = 99 , bins=64 ") == EstimatorSpec(
        "percentile", {"percentile": 99.0, "bins": 64}
    )
    assert parse_estimator_spec("current_minmax") == EstimatorSpec("current_minmax", {})


@pytest.mark.parametrize(
    "text, message",
    [
        ("nope", "known: allminmax, cross_entropy, current_minmax"),
        ("mse:bitz=8", "parameters: bits=8, symmetric=False"),
        ("mse:bits=eight", "bits='eight' should be int"),
        ("mse:bits=8.5", "should be int"),
        ("mse:symmetric=1", "should be bool"),
        ("mse:bits", "name:key=value"),
        ("mse:bits=8,bits=4", "unique keys"),
        (":bits=8", "missing estimator name"),
    ],
)
def test_parse_spec_errors(text, message):
    with pytest.raises(UsageError, match=message):
        parse_estimator_spec(text)


def test_make_estimator():
    est = make_estimator("running_minmax:momentum=0.5", PerChannel())
    assert isinstance(est, RangeEstimator) and est.momentum == 0.5
    assert isinstance(make_estimator(EstimatorSpec("mse", {"bits": 4}), PerTensor()), RangeEstimator)
    with pytest.raises(UsageError, match="momentum must be in"):
        make_estimator("running_minmax:momentum=1.5", PerTensor())
    with pytest.raises(UsageError, match="bits must be"):
        make_estimator("mse:bits=40", PerTensor())
    with pytest.raises(UsageError, match="no parameter"):
        make_estimator(EstimatorSpec("percentile", {"p": 99}), PerTensor())


def test_register_from_test_code(isolated_registry, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fake_plugin"))
    from qonnx_fake_estimator import AbsMax

    @register_estimator("test_scaled")
    class Scaled(AbsMax):
        """The plugin's estimator, registered by the decorator instead of an entry point."""

    assert Scaled.name == "test_scaled" and "test_scaled" in estimator_names()
    est = make_estimator("test_scaled:margin=2", PerTensor())
    est.update(np.array([[1.0, 3.0]]))
    assert est.range()[1][0] == 6.0
    with pytest.raises(ValueError, match="already registered"):
        register_estimator("test_scaled")(type("Other", (Scaled,), {}))


def test_entry_point_plugin(isolated_registry, monkeypatch, tmp_path):
    shutil.copytree(Path(__file__).parent / "fake_plugin", tmp_path, dirs_exist_ok=True)
    monkeypatch.syspath_prepend(str(tmp_path))  # importlib.metadata finds the dist-info here
    assert {"fake_absmax", "fake_broken"} <= set(estimator_names())
    assert "fake_absmax" not in registry._REGISTRY  # listed without importing: lazy
    cls = get_estimator("fake_absmax")
    assert cls.__name__ == "AbsMax" and registry._REGISTRY["fake_absmax"] is cls
    est = make_estimator("fake_absmax:margin=1.5", PerTensor())
    est.update(np.array([[1.0, -4.0]], np.float32))
    assert est.range()[0][0] == -6.0
    with pytest.raises(UsageError, match="fake_broken.*failed to load"):
        get_estimator("fake_broken")
    with pytest.raises(UsageError, match="not a class"):
        get_estimator("fake_not_a_class")
