"""The quantize stage: typed scheme configurations, the schemes that plan, and the one entry point."""

from qonnx_bert.quantize.api import QuantReport, quant_report, quantize
from qonnx_bert.quantize.config import (
    AutoMpConfig,
    ConfigError,
    Grouping,
    MixedPrecisionConfig,
    PegConfig,
    PegEqualConfig,
    Permutation,
    SchemeConfig,
    SmoothQuantConfig,
    Target,
    W8A8Config,
    W8A32Config,
    W32A8Config,
)
from qonnx_bert.quantize.schemes import config_for, config_from_dict, scheme_names

__all__ = [
    "AutoMpConfig",
    "ConfigError",
    "Grouping",
    "MixedPrecisionConfig",
    "PegConfig",
    "PegEqualConfig",
    "Permutation",
    "QuantReport",
    "SchemeConfig",
    "SmoothQuantConfig",
    "Target",
    "W8A8Config",
    "W8A32Config",
    "W32A8Config",
    "config_for",
    "config_from_dict",
    "quantize",
    "quant_report",
    "scheme_names",
]
