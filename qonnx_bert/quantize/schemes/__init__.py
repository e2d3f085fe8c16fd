"""Quantization schemes by name: each pairs a config class with a planner.

A scheme is any object with ``config`` (a ``SchemeConfig`` subclass: its ``scheme``
is the name, its ``summary`` the help line) and ``plan(ctx) -> Plan``; ``passes.qdq``
applies the plan. Built-ins are listed here; third-party schemes register under the
``qonnx.schemes`` entry-point group (``name = "module:SCHEME"``) and are loaded on
first lookup, like estimator plugins.
"""

from __future__ import annotations

from typing import Any

from qonnx_bert.core.plugins import load_plugin, plugin_entry_points
from qonnx_bert.passes.plan import SOFTMAX_MASK_MARGIN, Plan, activation_ranges
from qonnx_bert.quantize.config import ConfigError, SchemeConfig, make_config
from qonnx_bert.quantize.schemes.baseline import BASELINES
from qonnx_bert.quantize.schemes.context import SchemeContext
from qonnx_bert.quantize.schemes.mixed import MIXED_SCHEMES, with_int16
from qonnx_bert.quantize.schemes.peg import PEG_SCHEMES
from qonnx_bert.quantize.schemes.smooth import SMOOTH_SCHEMES

ENTRY_POINT_GROUP = "qonnx.schemes"
SCHEMES: dict[str, Any] = {
    s.config.scheme: s
    for s in (*map(with_int16, (*BASELINES, *PEG_SCHEMES)), *MIXED_SCHEMES, *map(with_int16, SMOOTH_SCHEMES))
}


def _plugins() -> dict[str, Any]:
    return {name: ep for name, ep in plugin_entry_points(ENTRY_POINT_GROUP).items() if name not in SCHEMES}


def scheme_names() -> list[str]:
    """Built-in and plugin scheme names (plugins listed without importing them)."""
    return [*SCHEMES, *sorted(_plugins())]


def _is_scheme(obj: Any) -> bool:
    config = getattr(obj, "config", None)
    return isinstance(config, type) and issubclass(config, SchemeConfig) and callable(getattr(obj, "plan", None))


def get_scheme(name: str) -> Any:
    """The scheme registered as ``name``; loads a plugin entry point on first lookup."""
    if name in SCHEMES:
        return SCHEMES[name]
    scheme = load_plugin(
        ENTRY_POINT_GROUP,
        name,
        "scheme",
        _is_scheme,
        "an object with a SchemeConfig subclass `config` and `plan(ctx)`",
        scheme_names(),
    )
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
