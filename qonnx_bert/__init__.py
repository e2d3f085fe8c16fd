"""qonnx_bert: quantize BERT-style ONNX models (W8A8, int16 mixed precision, PEG) for ONNX Runtime.

Data flow: export -> roles -> calibrate -> scheme -> QDQ -> evaluate / check on a runtime.
"""

__version__ = "0.1.0"
