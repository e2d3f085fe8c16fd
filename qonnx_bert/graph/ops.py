"""Op-type sets the stages share, named by what they are."""

# Ops that only rearrange a tensor's elements: a value and its reshaped copy are one value.
LAYOUT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")
# Ops whose output ONNX Runtime's quantizer puts on its input's grid (layout ops plus selections).
DATA_MOVEMENT_OPS = (*LAYOUT_OPS, "Gather", "Slice")
# Binary arithmetic that broadcasts a constant along the last axis.
ARITHMETIC_OPS = ("Add", "Sub", "Mul", "Div")
# Elementwise ops whose inputs and output share one integer type on HTP.
ELEMENTWISE_OPS = (*ARITHMETIC_OPS, "Where")
