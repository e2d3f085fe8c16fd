"""Lowest layer: errors, safe files, model metadata keys, ONNX Runtime sessions, numeric metrics."""
