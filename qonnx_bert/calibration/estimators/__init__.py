"""Range estimators for calibration: pure NumPy, fed ``(tokens, columns)`` batches.

Pick one by spec string (``make_estimator("mse:bits=8", PerTensor())``); importing this
package registers the built-ins: current_minmax, allminmax, running_minmax, percentile, mse,
cross_entropy.
"""

from qonnx_bert.calibration.estimators.base import (
    BaseEstimator,
    Granularity,
    Layout,
    NonFiniteError,
    PerChannel,
    PerGroup,
    PerTensor,
    RangeEstimator,
    column_groups,
    valid_rows,
)
from qonnx_bert.calibration.estimators.cross_entropy import CrossEntropy, softmax_kl
from qonnx_bert.calibration.estimators.histogram import StreamingHistogram
from qonnx_bert.calibration.estimators.minmax import AllMinMax, CurrentMinMax
from qonnx_bert.calibration.estimators.mse import MSE, data_mse, hist_mse, search_range
from qonnx_bert.calibration.estimators.percentile import Percentile
from qonnx_bert.calibration.estimators.quant import grid, quant_dequant
from qonnx_bert.calibration.estimators.registry import (
    ENTRY_POINT_GROUP,
    EstimatorSpec,
    estimator_names,
    get_estimator,
    make_estimator,
    parse_estimator_spec,
    register_estimator,
)
from qonnx_bert.calibration.estimators.running import RunningMinMax
from qonnx_bert.calibration.estimators.weights import weight_range

__all__ = [
    "ENTRY_POINT_GROUP",
    "MSE",
    "AllMinMax",
    "BaseEstimator",
    "CrossEntropy",
    "CurrentMinMax",
    "EstimatorSpec",
    "Granularity",
    "Layout",
    "NonFiniteError",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "Percentile",
    "RangeEstimator",
    "RunningMinMax",
    "StreamingHistogram",
    "column_groups",
    "data_mse",
    "estimator_names",
    "get_estimator",
    "grid",
    "hist_mse",
    "make_estimator",
    "parse_estimator_spec",
    "quant_dequant",
    "register_estimator",
    "search_range",
    "softmax_kl",
    "valid_rows",
    "weight_range",
]
