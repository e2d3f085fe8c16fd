"""qonnx_bert: quantize BERT-style ONNX models (W8A8, int16 mixed precision, PEG) for ONNX Runtime.

Data flow: export -> roles -> calibrate -> scheme -> QDQ -> evaluate / check on a runtime.

The Python API (``qonnx_bert/api.py``) and the scheme configs are imported on first use, so
``import qonnx_bert`` stays instant::

    import qonnx_bert as qb
    qb.export("minilm-l6", "emb.onnx", task="feature-extraction")
    model, report = qb.quantize("emb.onnx", qb.PegConfig(), qb.calibrate("emb.onnx"), output="emb.peg.onnx")
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_API = ("export", "calibrate", "evaluate", "check", "qat", "sts_sample_dir")
_CONFIGS = (
    "W8A8Config",
    "W8A32Config",
    "W32A8Config",
    "MixedPrecisionConfig",
    "AutoMpConfig",
    "PegConfig",
    "PegEqualConfig",
    "SmoothQuantConfig",
    "Grouping",
    "Permutation",
    "Target",
    "config_for",
)
_TRAINING = ("QatConfig",)  # imports torch: on first use only
__all__ = [*_API, "quantize", *_CONFIGS, *_TRAINING, "__version__"]


class _Package(types.ModuleType):
    """The root package keeps ``quantize`` the API function: importing the ``qonnx_bert.quantize``
    subpackage would otherwise rebind the name to the module (it stays in ``sys.modules``, so
    ``from qonnx_bert.quantize import ...`` is unaffected)."""

    def __setattr__(self, name: str, value) -> None:
        if name == "quantize" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


def quantize(model, config, ranges, *, output=None):
    """The QDQ model of ``config``'s scheme and its report (see ``qonnx_bert.api.quantize``)."""
    from qonnx_bert.api import quantize as run

    return run(model, config, ranges, output=output)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    """Lazy imports (PEP 562): the API from ``qonnx_bert.api``, the configs from ``qonnx_bert.quantize``
    (``QatConfig`` from ``qonnx_bert.training.qat``)."""
    if name in _API:
        return getattr(importlib.import_module("qonnx_bert.api"), name)
    if name in _CONFIGS:
        return getattr(importlib.import_module("qonnx_bert.quantize"), name)
    if name in _TRAINING:
        return getattr(importlib.import_module("qonnx_bert.training.qat"), name)
    raise AttributeError(f"module 'qonnx_bert' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
