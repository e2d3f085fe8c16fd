"""Graph layer: the ONNX idioms every stage shares (roles of a BERT graph, the prepared mask path)."""
