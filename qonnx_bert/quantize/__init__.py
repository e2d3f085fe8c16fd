"""The quantize stage: typed scheme configurations, the schemes that plan, and the one entry point."""

from qonnx_bert.quantize.api import QuantReport, quantize, report

__all__ = ["QuantReport", "quantize", "report"]
