"""Calibration: range estimators and the ONNX Runtime collection loop."""
