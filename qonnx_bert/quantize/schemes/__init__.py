"""Quantization schemes by name: each pairs a config class with a planner.

A scheme is any object with ``config`` (a ``SchemeConfig`` subclass: its ``scheme``
is the name, its ``summary`` the help line) and ``plan(ctx) -> Plan``; ``passes.qdq``
applies the plan. Built-ins are listed here; third-party schemes register under the
``qonnx.schemes`` entry-point group (``name = "module:SCHEME"``) and are loaded on
first lookup, like estimator plugins.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from qonnx_bert.core.errors import UsageError
from qonnx_bert.passes.plan import SOFTMAX_MASK_MARGIN, Plan, activation_ranges
from qonnx_bert.quantize.config import ConfigError, SchemeConfig, make_config
from qonnx_bert.quantize.schemes.baseline import BASELINES
from qonnx_bert.quantize.schemes.context import SchemeContext
from qonnx_bert.quantize.schemes.mixed import MIXED_SCHEMES, with_int16
from qonnx_bert.quantize.schemes.peg import PEG_SCHEMES

ENTRY_POINT_GROUP = "qonnx.schemes"
SCHEMES: dict[str, Any] = {s.config.scheme: s for s in (*map(with_int16, (*BASELINES, *PEG_SCHEMES)), *MIXED_SCHEMES)}


def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in SCHEMES}


def scheme_names() -> list[str]:
    """Built-in and plugin scheme names (plugins listed without importing them)."""
    return [*SCHEMES, *sorted(_plugins())]


def get_scheme(name: str) -> Any:
    """The scheme registered as ``name``; loads a plugin entry point on first lookup."""
    if name in SCHEMES:
        return SCHEMES[name]
    ep = _plugins().get(name)
    if ep is None:
        raise UsageError(f"unknown scheme {name!r}; choose one of: {', '.join(scheme_names())}")
    try:
        scheme = ep.load()
    except Exception as err:  # a broken plugin is the user's environment, not our bug
        raise UsageError(f"scheme plugin {name!r} ({ep.value}) failed to load: {err}") from err
    config = getattr(scheme, "config", None)
    if not (isinstance(config, type) and issubclass(config, SchemeConfig) and callable(getattr(scheme, "plan", None))):
        raise UsageError(f"scheme plugin {name!r} ({ep.value}) has no SchemeConfig subclass `config` and `plan(ctx)`")
    SCHEMES[name] = scheme
    return scheme


def config_for(name: str, **values: Any) -> SchemeConfig:
    """The config of scheme ``name`` with ``values``; every bad or unknown value reported at once."""
    return make_config(get_scheme(name).config, values)


def config_from_dict(data: dict[str, Any]) -> SchemeConfig:
    """Inverse of ``SchemeConfig.to_dict``."""
    if not isinstance(data, dict) or not isinstance(data.get("scheme"), str):
        raise ConfigError([("scheme", "is missing: a config is a JSON object with a 'scheme' name")])
    return config_for(data["scheme"], **{k: v for k, v in data.items() if k != "scheme"})


__all__ = [
    "SCHEMES",
    "SOFTMAX_MASK_MARGIN",
    "Plan",
    "SchemeContext",
    "activation_ranges",
    "config_for",
    "config_from_dict",
    "get_scheme",
    "scheme_names",
]
