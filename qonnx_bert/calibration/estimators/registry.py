"""Estimators by name: built-ins register with a decorator, plugins via entry points.

A spec string such as ``"mse:bits=8,symmetric=false"`` names an estimator and its
constructor keywords; it is checked against the class's ``__init__`` signature so a
typo fails at the command line (``UsageError``), not after an hour of calibration.
Plugins declare ``[project.entry-points."qonnx.estimators"] name = "module:Class"``;
they are imported only when a name is looked up that no built-in has.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.plugins import load_plugin, plugin_entry_points

if TYPE_CHECKING:
    from qonnx_bert.calibration.estimators.base import Granularity, RangeEstimator

ENTRY_POINT_GROUP = "qonnx.estimators"
_REGISTRY: dict[str, type] = {}


@dataclass(frozen=True)
class EstimatorSpec:
    """An estimator name and its constructor keywords (beyond ``granularity``)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


def register_estimator(name: str):
    """Class decorator: make ``cls`` available as ``name``; sets ``cls.name`` unless defined."""

    def decorate(cls: type) -> type:
        if _REGISTRY.get(name, cls) is not cls:
            raise ValueError(f"estimator name {name!r} is already registered to {_REGISTRY[name]!r}")
        if "name" not in cls.__dict__:
            cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _plugins() -> dict[str, Any]:
    return plugin_entry_points(ENTRY_POINT_GROUP)


def estimator_names() -> list[str]:
    """Built-in and plugin names, sorted (plugins are listed without importing them)."""
    return sorted(set(_REGISTRY) | set(_plugins()))


def get_estimator(name: str) -> type:
    """The class registered as ``name``; loads a plugin entry point on first lookup."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    methods = ("update", "range", "reset")
    cls = load_plugin(
        ENTRY_POINT_GROUP,
        name,
        "estimator",
        lambda c: inspect.isclass(c) and all(callable(getattr(c, m, None)) for m in methods),
        "a class with update/range/reset",
        estimator_names(),
    )
    return register_estimator(name)(cls)


def _parameters(cls: type) -> dict[str, inspect.Parameter]:
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, granularity
    return {p.name: p for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _coerce(name: str, key: str, value: Any, default: Any, known: str) -> Any:
    """``value`` converted to the type of the parameter's default, or UsageError."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if default is None or default is inspect.Parameter.empty:
        return value
    if isinstance(default, str):
        return str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and is_number
    else:
        ok, value = is_number, float(value) if is_number else value
    if not ok:
        kind = type(default).__name__
        raise UsageError(f"estimator {name!r}: {key}={value!r} should be {kind}; parameters: {known}")
    return value


def check_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` validated against estimator ``name``'s constructor keywords."""
    expected = _parameters(get_estimator(name))
    known = ", ".join(f"{k}={p.default!r}" for k, p in expected.items()) or "(none)"
    out = {}
    for key, value in params.items():
        if key not in expected:
            raise UsageError(f"estimator {name!r} has no parameter {key!r}; parameters: {known}")
        out[key] = _coerce(name, key, value, expected[key].default, known)
    return out


def _parse_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def parse_estimator_spec(text: str) -> EstimatorSpec:
    """``"name"`` or ``"name:key=value,key=value"``; values become int, float, bool or str."""
    name, colon, rest = text.strip().partition(":")
    name, params = name.strip(), {}
    if colon and not rest.strip():
        raise UsageError(f"bad estimator spec {text!r}: nothing after ':'; give name:key=value,... or just the name")
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not key or key in params:
            raise UsageError(f"bad estimator spec {text!r}: expected name:key=value,... with unique keys")
        params[key] = _parse_value(value)
    if not name:
        raise UsageError(f"bad estimator spec {text!r}: missing estimator name")
    return EstimatorSpec(name, check_params(name, params))


def make_estimator(spec: str | EstimatorSpec, granularity: Granularity) -> RangeEstimator:
    """A fresh estimator for ``spec`` at ``granularity``; bad names or values raise UsageError."""
    if isinstance(spec, str):
        spec = parse_estimator_spec(spec)
    params = check_params(spec.name, spec.params)
    try:
        return get_estimator(spec.name)(granularity, **params)
    except ValueError as err:
        raise UsageError(f"estimator {spec.name!r}: {err}") from err
