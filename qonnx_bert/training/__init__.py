"""Quantization-aware training: fine-tune through the deployed QDQ graph, export learned ranges."""
