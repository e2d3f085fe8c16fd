"""Inputs: the model (Hugging Face export, packaged checkpoints, fine-tune recipes) and the data
(tokenizer encoding, GLUE, calibration sentences)."""
