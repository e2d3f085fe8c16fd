"""Graph passes over ONNX models: preparation before calibration, QDQ insertion."""
