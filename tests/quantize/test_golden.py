"""Golden structure of the quantized models the bench configurations write, on the tiny BERT.

A refactor must not change what gets quantized: for each configuration the op counts
and every quantized tensor with its integer type are compared with
``tests/data/golden-quantized.json``. Values (scales) are not compared, so the check
does not depend on the CPU's float rounding; the byte-identity of whole models across
a refactor is checked by hand and said in its commit. Regenerate after an intended
change with ``python -m tests.quantize.test_golden`` and say why in the commit.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx
import pytest

from qonnx_bert.quantize import config_for, quantize

GOLDEN = Path(__file__).parents[1] / "data" / "golden-quantized.json"
CONFIGS = {
    "w8a8": ("w8a8", {}),
    "w8a8 --target cpu": ("w8a8", {"target": "cpu"}),
    "w8a8 + int16 residual sums": ("w8a8", {"int16": ["layer.*.ffn.residual_sum"]}),
    "mp": ("mp", {}),
    "auto-mp budget 4": ("auto-mp", {"budget": 4}),
    "peg": ("peg", {}),
    "peg --target cpu": ("peg", {"target": "cpu"}),
    "peg K=2 --target cpu J=1": ("peg", {"groups": 2, "target": "cpu", "intermediate_groups": 1}),
    "peg-equal": ("peg-equal", {}),
    "peg-equal K=3 no permutation": ("peg-equal", {"groups": 3, "permutation": "none"}),
}


def summary(model: onnx.ModelProto) -> dict:
    """Op counts and each activation quantizer's input tensor with its zero point's type."""
    inits = {i.name: i for i in model.graph.initializer}
    quantized = sorted(
        f"{n.input[0]}:{onnx.TensorProto.DataType.Name(inits[n.input[2]].data_type)}"
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits
    )
    return {"ops": dict(sorted(Counter(n.op_type for n in model.graph.node).items())), "quantized": quantized}


def summaries(fp32, ranges) -> dict:
    return {name: summary(quantize(fp32, config_for(s, **o), ranges)[0]) for name, (s, o) in CONFIGS.items()}


@pytest.mark.parametrize("name", CONFIGS)
def test_quantized_structure_is_unchanged(fp32, ranges, name):
    scheme, options = CONFIGS[name]
    got = summary(quantize(fp32, config_for(scheme, **options), ranges)[0])
    assert got == json.loads(GOLDEN.read_text())[name]


if __name__ == "__main__":  # regenerate the golden file from the current code
    import tempfile

    from qonnx_bert.calibration.calibrate import calibrate
    from qonnx_bert.inputs.export import export_model
    from qonnx_bert.inputs.sequences import sample_sequences, shipped_sentences
    from tests.conftest import build_tiny_bert

    with tempfile.TemporaryDirectory() as tmp:
        export_model(str(build_tiny_bert(Path(tmp) / "bert")), Path(tmp) / "tiny.onnx")
        fp32 = onnx.load(str(Path(tmp) / "tiny.onnx"))
    table = calibrate(fp32, sample_sequences(shipped_sentences(), None, 32, 0, "shipped"), progress=False)
    GOLDEN.write_text(json.dumps(summaries(fp32, table), indent=1) + "\n")
